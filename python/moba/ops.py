"""MoBA and dense causal attention as torch ops (torch.library.custom_op, namespace "moba"),
with fake (meta) implementations and autograd, over libmoba_ops.so (ctypes, no libtorch).

Shapes (docs/moba.md): q, out (N, Hq, D); k, v (N, Hkv, D); cu_seqlens int32 (B + 1);
lse (N, Hq); sel (N, Hq, K) int32. CUDA: bf16 tensors, fp32 lse (the kernels of
src/attention/cuda). CPU: float32 or float64 tensors, lse in the same dtype (the C++
reference of src/attention).

The registered ops (torch.ops.moba.*) return what their backward needs:
  moba_gate(q, k, cu_seqlens, max_seqlen, S, K) -> sel
  moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, S, K, scale) -> (out, lse, sel, meta)
  flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, scale) -> (out, lse, meta)
meta (B + 2) int64 on the CPU holds [generation, cu_seqlens...]: the backward needs the
host offsets (no second device-to-host copy) and, on CUDA, the forward's generation id
(src/pyops/moba_ops_cuda.cpp explains why). The public functions of moba/__init__.py check
their arguments (_check.py) and return out (and lse).
"""
from __future__ import annotations

import ctypes

import torch

from . import _lib
from ._check import check_qkv, host_offsets

_L = _lib.lib


# ---------------------------------------------------------------------------------------
# The CUDA plans' scratch comes from torch's caching allocator (ctypes callbacks into
# moba_cuda_set_allocator), so that it shares torch's pool instead of competing with it.
# Called from inside a C call made by this module, on the same thread, with q's device
# current (_OnDevice): the block belongs to the stream the kernels then run on.
_ALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)
_FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_blocks: "dict[int, torch.Tensor]" = {}  # device pointer -> the tensor that owns it


def _alloc(nbytes, _ctx):
    try:
        t = torch.empty(int(nbytes), dtype=torch.uint8,
                        device=torch.device("cuda", torch.cuda.current_device()))
    except BaseException as e:  # noqa: BLE001 - re-raised by _lib.check
        _lib.alloc_error.append(e)
        return None
    _blocks[t.data_ptr()] = t
    return t.data_ptr()


def _free(ptr, _ctx):
    _blocks.pop(ptr, None)


_alloc_cb, _free_cb = _ALLOC_FN(_alloc), _FREE_FN(_free)  # kept alive with the module
if _lib.HAS_CUDA:
    _lib.check(_L.moba_cuda_set_allocator(ctypes.cast(_alloc_cb, ctypes.c_void_p),
                                          ctypes.cast(_free_cb, ctypes.c_void_p), None))


def _ptr(t: torch.Tensor):
    return t.data_ptr()


def _dtype_code(t: torch.Tensor) -> int:
    return _lib.F64 if t.dtype == torch.float64 else _lib.F32


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float32 if q.device.type == "cuda" else q.dtype


class _OnDevice:
    """The CUDA device of q made current, and its current stream (as a cudaStream_t)."""

    def __init__(self, q: torch.Tensor):
        self.q = q
        self.ctx = torch.cuda.device(q.device) if q.device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is None:
            return None
        self.ctx.__enter__()
        return torch.cuda.current_stream(self.q.device).cuda_stream

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _meta(generation: int, offsets: "list[int]") -> torch.Tensor:
    return torch.tensor([generation] + offsets, dtype=torch.int64)


# ---------------------------------------------------------------------------------------
# gate
@torch.library.custom_op("moba::moba_gate", mutates_args=())
def moba_gate_op(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                 moba_chunk_size: int, moba_topk: int) -> torch.Tensor:
    q, k, _ = check_qkv("moba_gate", q, k)  # also here: torch.ops.moba.* skip the wrappers
    N, Hq, D = q.shape
    Hkv = k.shape[1]
    cu = host_offsets("moba_gate", cu_seqlens, N, max_seqlen)
    B = len(cu) - 1
    sel = torch.empty((N, Hq, moba_topk), dtype=torch.int32, device=q.device)  # (N, Hq, K)
    with _OnDevice(q) as stream:
        if stream is None:
            rc = _L.moba_cpu_gate(_dtype_code(q), _lib.cu_array(cu), B, Hq, Hkv, D,
                                  moba_chunk_size, moba_topk, _ptr(q), _ptr(k), _ptr(sel))
        else:
            rc = _L.moba_cuda_gate(_lib.cu_array(cu), B, Hq, Hkv, D, moba_chunk_size,
                                   moba_topk, _ptr(q), _ptr(k), _ptr(sel), stream)
    _lib.check(rc)
    return sel


@moba_gate_op.register_fake
def _(q, k, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk):
    return q.new_empty((q.shape[0], q.shape[1], moba_topk), dtype=torch.int32)


# ---------------------------------------------------------------------------------------
# MoBA attention
def _moba_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cu_seqlens: torch.Tensor, max_seqlen: int, moba_chunk_size: int,
                   moba_topk: int, softmax_scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = check_qkv("moba_attn_varlen", q, k, v)
    N, Hq, D = q.shape
    Hkv = k.shape[1]
    S, K = moba_chunk_size, moba_topk
    cu = host_offsets("moba_attn_varlen", cu_seqlens, N, max_seqlen)
    B = len(cu) - 1
    out = torch.empty_like(q)                                                 # (N, Hq, D)
    lse = torch.empty((N, Hq), dtype=_lse_dtype(q), device=q.device)          # (N, Hq)
    sel = torch.empty((N, Hq, K), dtype=torch.int32, device=q.device)         # (N, Hq, K)
    generation = 0
    with _OnDevice(q) as stream:
        if stream is None:
            dt, c = _dtype_code(q), _lib.cu_array(cu)
            _lib.check(_L.moba_cpu_gate(dt, c, B, Hq, Hkv, D, S, K, _ptr(q), _ptr(k), _ptr(sel)))
            rc = _L.moba_cpu_moba_forward(dt, c, B, Hq, Hkv, D, S, K, softmax_scale, _ptr(sel),
                                          _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse))
        else:
            gen = ctypes.c_int64(-1)
            rc = _L.moba_cuda_moba_forward(_lib.cu_array(cu), B, Hq, Hkv, D, S, K,
                                           softmax_scale, 1, _ptr(sel), _ptr(q), _ptr(k),
                                           _ptr(v), _ptr(out), _ptr(lse), stream,
                                           ctypes.byref(gen))
            generation = gen.value
    _lib.check(rc)
    return out, lse, sel, _meta(generation, cu)


moba_attn_varlen_op = torch.library.custom_op("moba::moba_attn_varlen", mutates_args=())(_moba_fwd_impl)


@moba_attn_varlen_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk, softmax_scale):
    N, Hq, _ = q.shape
    return (torch.empty_like(q), q.new_empty((N, Hq), dtype=_lse_dtype(q)),
            q.new_empty((N, Hq, moba_topk), dtype=torch.int32),
            torch.empty((cu_seqlens.shape[0] + 1,), dtype=torch.int64, device="cpu"))


def _moba_bwd_impl(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   sel: torch.Tensor, meta: torch.Tensor, moba_chunk_size: int,
                   moba_topk: int, softmax_scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dout = dout.to(q.dtype).contiguous()
    q, k, v, out, lse, sel = (t.contiguous() for t in (q, k, v, out, lse, sel))
    N, Hq, D = q.shape
    Hkv = k.shape[1]
    S, K = moba_chunk_size, moba_topk
    m = meta.tolist()
    generation, cu = m[0], m[1:]
    B = len(cu) - 1
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with _OnDevice(q) as stream:
        if stream is None:
            rc = _L.moba_cpu_moba_backward(_dtype_code(q), _lib.cu_array(cu), B, Hq, Hkv, D, S,
                                           K, softmax_scale, _ptr(sel), _ptr(q), _ptr(k),
                                           _ptr(v), _ptr(out), _ptr(lse), _ptr(dout), _ptr(dq),
                                           _ptr(dk), _ptr(dv))
        else:
            rc = _L.moba_cuda_moba_backward(_lib.cu_array(cu), B, Hq, Hkv, D, S, K,
                                            softmax_scale, _ptr(sel), generation, _ptr(q),
                                            _ptr(k), _ptr(v), _ptr(out), _ptr(lse), _ptr(dout),
                                            _ptr(dq), _ptr(dk), _ptr(dv), stream)
    _lib.check(rc)
    return dq, dk, dv


moba_attn_varlen_backward_op = torch.library.custom_op("moba::moba_attn_varlen_backward", mutates_args=())(_moba_bwd_impl)


@moba_attn_varlen_backward_op.register_fake
def _(dout, q, k, v, out, lse, sel, meta, moba_chunk_size, moba_topk, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _moba_setup(ctx, inputs, output):
    q, k, v, _cu, _max, S, K, scale = inputs
    out, lse, sel, meta = output
    ctx.save_for_backward(q, k, v, out, lse, sel, meta)
    ctx.moba = (S, K, scale)
    ctx.mark_non_differentiable(lse)  # lse carries no gradient (docs/python.md)


def _moba_backward(ctx, dout, _dlse, _dsel, _dmeta):
    q, k, v, out, lse, sel, meta = ctx.saved_tensors
    S, K, scale = ctx.moba
    dq, dk, dv = moba_attn_varlen_backward_op(dout, q, k, v, out, lse, sel, meta, S, K, scale)
    return dq, dk, dv, None, None, None, None, None


moba_attn_varlen_op.register_autograd(_moba_backward, setup_context=_moba_setup)


# ---------------------------------------------------------------------------------------
# dense causal attention
def _dense_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cu_seqlens: torch.Tensor, max_seqlen: int, softmax_scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = check_qkv("flash_attn_varlen", q, k, v)
    N, Hq, D = q.shape
    Hkv = k.shape[1]
    cu = host_offsets("flash_attn_varlen", cu_seqlens, N, max_seqlen)
    B = len(cu) - 1
    out = torch.empty_like(q)                                         # (N, Hq, D)
    lse = torch.empty((N, Hq), dtype=_lse_dtype(q), device=q.device)  # (N, Hq)
    with _OnDevice(q) as stream:
        if stream is None:
            rc = _L.moba_cpu_dense_forward(_dtype_code(q), _lib.cu_array(cu), B, Hq, Hkv, D,
                                           softmax_scale, _ptr(q), _ptr(k), _ptr(v), _ptr(out),
                                           _ptr(lse))
        else:
            rc = _L.moba_cuda_dense_forward(_lib.cu_array(cu), B, Hq, Hkv, D, softmax_scale,
                                            _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse),
                                            stream)
    _lib.check(rc)
    return out, lse, _meta(0, cu)


flash_attn_varlen_op = torch.library.custom_op("moba::flash_attn_varlen", mutates_args=())(_dense_fwd_impl)


@flash_attn_varlen_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, softmax_scale):
    N, Hq, _ = q.shape
    return (torch.empty_like(q), q.new_empty((N, Hq), dtype=_lse_dtype(q)),
            torch.empty((cu_seqlens.shape[0] + 1,), dtype=torch.int64, device="cpu"))


def _dense_bwd_impl(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                    meta: torch.Tensor, softmax_scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dout = dout.to(q.dtype).contiguous()
    q, k, v, out, lse = (t.contiguous() for t in (q, k, v, out, lse))
    N, Hq, D = q.shape
    Hkv = k.shape[1]
    cu = meta.tolist()[1:]
    B = len(cu) - 1
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with _OnDevice(q) as stream:
        if stream is None:
            rc = _L.moba_cpu_dense_backward(_dtype_code(q), _lib.cu_array(cu), B, Hq, Hkv, D,
                                            softmax_scale, _ptr(q), _ptr(k), _ptr(v),
                                            _ptr(out), _ptr(lse), _ptr(dout), _ptr(dq),
                                            _ptr(dk), _ptr(dv))
        else:
            rc = _L.moba_cuda_dense_backward(_lib.cu_array(cu), B, Hq, Hkv, D, softmax_scale,
                                             _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse),
                                             _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv), stream)
    _lib.check(rc)
    return dq, dk, dv


flash_attn_varlen_backward_op = torch.library.custom_op("moba::flash_attn_varlen_backward", mutates_args=())(_dense_bwd_impl)


@flash_attn_varlen_backward_op.register_fake
def _(dout, q, k, v, out, lse, meta, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _dense_setup(ctx, inputs, output):
    q, k, v, _cu, _max, scale = inputs
    out, lse, meta = output
    ctx.save_for_backward(q, k, v, out, lse, meta)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _dense_backward(ctx, dout, _dlse, _dmeta):
    q, k, v, out, lse, meta = ctx.saved_tensors
    dq, dk, dv = flash_attn_varlen_backward_op(dout, q, k, v, out, lse, meta, ctx.scale)
    return dq, dk, dv, None, None, None


flash_attn_varlen_op.register_autograd(_dense_backward, setup_context=_dense_setup)


# ---------------------------------------------------------------------------------------
# Eager fast path. The custom ops above are what torch.compile traces (fake impls, no graph
# break) and what torch.ops.moba.* exposes; in eager mode their dispatch (schema defaults,
# the autograd wrapper, a second custom op for the backward) costs a few hundred
# microseconds of host time per forward+backward, which shows when a call's GPU work is a
# few milliseconds (5% at 32K tokens). The public functions run the same implementations
# through a plain autograd.Function when nothing is being traced.
class _MobaAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, S, K, scale):
        out, lse, sel, meta = _moba_fwd_impl(q, k, v, cu_seqlens, max_seqlen, S, K, scale)
        ctx.save_for_backward(q, k, v, out, lse, sel, meta)
        ctx.moba = (S, K, scale)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, sel, meta = ctx.saved_tensors
        S, K, scale = ctx.moba
        dq, dk, dv = _moba_bwd_impl(dout, q, k, v, out, lse, sel, meta, S, K, scale)
        return dq, dk, dv, None, None, None, None, None


class _DenseAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, scale):
        out, lse, meta = _dense_fwd_impl(q, k, v, cu_seqlens, max_seqlen, scale)
        ctx.save_for_backward(q, k, v, out, lse, meta)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, meta = ctx.saved_tensors
        dq, dk, dv = _dense_bwd_impl(dout, q, k, v, out, lse, meta, ctx.scale)
        return dq, dk, dv, None, None, None


def _eager(*tensors) -> bool:
    """True when the call runs eagerly on plain tensors (not traced by torch.compile or
    export, no fake, meta or subclass tensors): the fast path then computes the same thing."""
    if torch.compiler.is_compiling():
        return False
    return all(type(t) is torch.Tensor and t.device.type != "meta" for t in tensors)


def moba_attn(q, k, v, cu_seqlens, max_seqlen, S, K, scale):
    """(out, lse) of MoBA attention: the fast path in eager mode, the custom op otherwise."""
    if _eager(q, k, v, cu_seqlens):
        return _MobaAttn.apply(q, k, v, cu_seqlens, max_seqlen, S, K, scale)
    out, lse, _, _ = moba_attn_varlen_op(q, k, v, cu_seqlens, max_seqlen, S, K, scale)
    return out, lse


def dense_attn(q, k, v, cu_seqlens, max_seqlen, scale):
    """(out, lse) of dense causal attention: the fast path in eager mode, the op otherwise."""
    if _eager(q, k, v, cu_seqlens):
        return _DenseAttn.apply(q, k, v, cu_seqlens, max_seqlen, scale)
    out, lse, _ = flash_attn_varlen_op(q, k, v, cu_seqlens, max_seqlen, scale)
    return out, lse
