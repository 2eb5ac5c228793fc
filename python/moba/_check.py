"""Argument checks of the public ops: every bad input raises TypeError or ValueError naming
the argument and the problem, before anything reaches the C++/CUDA library.

Checks on shapes, dtypes and devices only read tensor metadata, so they trace under
torch.compile without a graph break. Checks on the CONTENTS of cu_seqlens (and
max_seqlen against the longest sequence) need its values on the host; they run inside the
ops (host_offsets below), where one .cpu() copy serves validation and the C library.
"""
from __future__ import annotations

import math
import weakref

import torch

# Kernel limits, mirrored from src/attention/cuda/attention_cuda.h.
CUDA_HEAD_DIMS = (64, 128)
CUDA_MIN_BLOCK = 64   # kMinBlockSize; powers of two only
CUDA_MAX_TOPK = 16    # kMaxTopK
CPU_DTYPES = (torch.float32, torch.float64)


def _is_int(x) -> bool:
    return isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool)


def tensor_arg(fn: str, name: str, x, rank: int, shape_doc: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{fn}: {name} must have {rank} dimensions {shape_doc}, "
                         f"got shape {tuple(x.shape)}")
    return x


def check_device_dtype(fn: str, q: torch.Tensor, others: dict) -> None:
    """q decides the device and dtype; every tensor in `others` must match them."""
    dev = q.device
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: q is on {dev}; the ops run on cpu or cuda tensors")
    for name, t in others.items():
        if t.device != dev:
            raise ValueError(f"{fn}: {name} is on {t.device} but q is on {dev}; "
                             "all tensors must be on one device")
    if dev.type == "cuda":
        if q.dtype != torch.bfloat16:
            raise TypeError(f"{fn}: q has dtype {q.dtype}; the CUDA kernels take "
                            "torch.bfloat16 only (convert with .to(torch.bfloat16))")
    elif q.dtype not in CPU_DTYPES:
        raise TypeError(f"{fn}: q has dtype {q.dtype}; on the CPU the ops take torch.float32 "
                        "or torch.float64 (bfloat16 runs on CUDA)")
    for name, t in others.items():
        if t.dtype != q.dtype:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype} but q has {q.dtype}")


def check_qkv(fn: str, q, k, v=None):
    """q (N, Hq, D), k and v (N, Hkv, D). Returns them contiguous."""
    q = tensor_arg(fn, "q", q, 3, "(N, Hq, D)")
    k = tensor_arg(fn, "k", k, 3, "(N, Hkv, D)")
    others = {"k": k}
    if v is not None:
        v = tensor_arg(fn, "v", v, 3, "(N, Hkv, D)")
        others["v"] = v
    check_device_dtype(fn, q, others)
    N, Hq, D = q.shape
    if N < 1 or Hq < 1 or D < 1:
        raise ValueError(f"{fn}: q must be non-empty (N, Hq, D), got shape {tuple(q.shape)}")
    if k.shape[0] != N or k.shape[2] != D:
        raise ValueError(f"{fn}: k has shape {tuple(k.shape)}; expected (N, Hkv, D) = "
                         f"({N}, Hkv, {D}) to match q {tuple(q.shape)}")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"{fn}: v has shape {tuple(v.shape)} but k has {tuple(k.shape)}")
    Hkv = k.shape[1]
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"{fn}: the number of query heads ({Hq}, q.shape[1]) must be a "
                         f"multiple of the key/value heads ({Hkv}, k.shape[1])")
    if q.device.type == "cuda" and D not in CUDA_HEAD_DIMS:
        raise ValueError(f"{fn}: head dim {D} has no CUDA kernel (supported: "
                         f"{', '.join(map(str, CUDA_HEAD_DIMS))})")
    # Non-contiguous inputs are made contiguous (a copy), as documented.
    q, k = q.contiguous(), k.contiguous()
    if v is not None:
        v = v.contiguous()
    return q, k, v


def check_cu(fn: str, q: torch.Tensor, cu_seqlens, max_seqlen) -> None:
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{fn}: cu_seqlens must be an int32 torch.Tensor (B + 1), "
                        f"got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{fn}: cu_seqlens must have dtype torch.int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"{fn}: cu_seqlens must be 1-D with B + 1 >= 2 offsets, "
                         f"got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"{fn}: cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
    if not _is_int(max_seqlen):
        raise TypeError(f"{fn}: max_seqlen must be an int, got {type(max_seqlen).__name__}")
    if max_seqlen < 1:
        raise ValueError(f"{fn}: max_seqlen must be >= 1, got {max_seqlen}")


def check_moba(fn: str, q: torch.Tensor, chunk, topk) -> None:
    if not _is_int(chunk):
        raise TypeError(f"{fn}: moba_chunk_size must be an int, got {type(chunk).__name__}")
    if not _is_int(topk):
        raise TypeError(f"{fn}: moba_topk must be an int, got {type(topk).__name__}")
    if q.device.type == "cuda":
        if chunk < CUDA_MIN_BLOCK or (chunk & (chunk - 1)) != 0:
            raise ValueError(f"{fn}: moba_chunk_size must be a power of two >= "
                             f"{CUDA_MIN_BLOCK} on CUDA, got {chunk}")
        if not 1 <= topk <= CUDA_MAX_TOPK:
            raise ValueError(f"{fn}: moba_topk must be in 1..{CUDA_MAX_TOPK} on CUDA, got {topk}")
    else:
        if chunk < 1:
            raise ValueError(f"{fn}: moba_chunk_size must be >= 1, got {chunk}")
        if topk < 1:
            raise ValueError(f"{fn}: moba_topk must be >= 1 (the current block counts), "
                             f"got {topk}")


def softmax_scale_of(fn: str, softmax_scale, D: int) -> float:
    if softmax_scale is None:
        return float(D) ** -0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"{fn}: softmax_scale must be a float or None, "
                        f"got {type(softmax_scale).__name__}")
    if not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"{fn}: softmax_scale must be finite and > 0, got {softmax_scale}")
    return float(softmax_scale)


# Host copies of device cu_seqlens, so that the layers of one model step (the same tensor,
# unchanged: same object, data pointer and version counter) pay one device-to-host copy.
_HOST_CACHE: "dict[int, tuple]" = {}
_HOST_CACHE_MAX = 16


def host_offsets(fn: str, cu: torch.Tensor, N: int, max_seqlen: int) -> "list[int]":
    """cu_seqlens on the host, checked: starts at 0, strictly increasing, ends at N, no
    sequence longer than max_seqlen."""
    if cu.device.type == "cpu":
        offsets = cu.tolist()
    else:
        hit = _HOST_CACHE.get(id(cu))
        if (hit is not None and hit[0]() is cu and hit[1] == cu._version
                and hit[2] == cu.data_ptr()):
            offsets = hit[3]
        else:
            offsets = cu.cpu().tolist()
            if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
                _HOST_CACHE.pop(next(iter(_HOST_CACHE)))
            _HOST_CACHE[id(cu)] = (weakref.ref(cu), cu._version, cu.data_ptr(), offsets)
    if offsets[0] != 0:
        raise ValueError(f"{fn}: cu_seqlens must start at 0, got {offsets[0]}")
    longest = 0
    for i in range(1, len(offsets)):
        n = offsets[i] - offsets[i - 1]
        if n < 1:
            raise ValueError(f"{fn}: cu_seqlens must be strictly increasing (every sequence "
                             f"holds >= 1 token), but cu_seqlens[{i}] = {offsets[i]} <= "
                             f"cu_seqlens[{i - 1}] = {offsets[i - 1]}")
        longest = max(longest, n)
    if offsets[-1] != N:
        raise ValueError(f"{fn}: cu_seqlens must end at the number of tokens N = {N} "
                         f"(q.shape[0]), got {offsets[-1]}")
    if longest > max_seqlen:
        raise ValueError(f"{fn}: max_seqlen = {max_seqlen} is smaller than the longest "
                         f"sequence in cu_seqlens ({longest})")
    return offsets
