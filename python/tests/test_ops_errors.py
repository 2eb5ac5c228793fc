"""Every bad input of issue 11 section 1 raises TypeError or ValueError naming the argument
(CPU tensors; the CUDA-only limits are in test_ops_cuda.py). The "meta" device stands in
for a second device on a machine without a GPU."""
import pytest
import torch

import moba

N, Hq, Hkv, D = 20, 4, 2, 8


def good():
    return dict(q=torch.randn(N, Hq, D), k=torch.randn(N, Hkv, D), v=torch.randn(N, Hkv, D),
                cu_seqlens=torch.tensor([0, 7, 20], dtype=torch.int32), max_seqlen=13,
                moba_chunk_size=4, moba_topk=2)


def call_moba(**over):
    a = good()
    a.update(over)
    return moba.moba_attn_varlen(a["q"], a["k"], a["v"], a["cu_seqlens"], a["max_seqlen"],
                                 a["moba_chunk_size"], a["moba_topk"],
                                 **{k: a[k] for k in ("softmax_scale",) if k in a})


def call_dense(**over):
    a = good()
    a.update(over)
    kw = {k: a[k] for k in ("softmax_scale", "causal") if k in a}
    return moba.flash_attn_varlen(a["q"], a["k"], a["v"], a["cu_seqlens"], a["max_seqlen"], **kw)


def call_gate(**over):
    a = good()
    a.update(over)
    return moba.moba_gate(a["q"], a["k"], a["cu_seqlens"], a["max_seqlen"],
                          a["moba_chunk_size"], a["moba_topk"])


def cu(*xs, dtype=torch.int32):
    return torch.tensor(xs, dtype=dtype)


# (id, overrides, exception, text the message must contain)
BAD = [
    ("q_not_tensor", dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    ("q_int_dtype", dict(q=torch.zeros(N, Hq, D, dtype=torch.int64)), TypeError, "q has dtype torch.int64"),
    ("q_float16_cpu", dict(q=torch.randn(N, Hq, D).half()), TypeError, "q has dtype torch.float16"),
    ("q_bf16_cpu", dict(q=torch.randn(N, Hq, D).bfloat16()), TypeError, "q has dtype torch.bfloat16"),
    ("k_dtype_mismatch", dict(k=torch.randn(N, Hkv, D, dtype=torch.float64)), TypeError, "k has dtype torch.float64"),
    ("v_dtype_mismatch", dict(v=torch.randn(N, Hkv, D, dtype=torch.float64)), TypeError, "v has dtype"),
    ("q_on_meta", dict(q=torch.empty(N, Hq, D, device="meta"), k=torch.empty(N, Hkv, D, device="meta"),
                       v=torch.empty(N, Hkv, D, device="meta"), cu_seqlens=torch.empty(3, dtype=torch.int32, device="meta")),
     ValueError, "q is on meta"),
    ("k_other_device", dict(k=torch.empty(N, Hkv, D, device="meta")), ValueError, "k is on meta but q is on cpu"),
    ("v_other_device", dict(v=torch.empty(N, Hkv, D, device="meta")), ValueError, "v is on meta but q is on cpu"),
    ("q_rank", dict(q=torch.randn(N, Hq * D)), ValueError, "q must have 3 dimensions"),
    ("k_rank", dict(k=torch.randn(1, N, Hkv, D)), ValueError, "k must have 3 dimensions"),
    ("v_rank", dict(v=torch.randn(N, Hkv)), ValueError, "v must have 3 dimensions"),
    ("k_tokens", dict(k=torch.randn(N + 1, Hkv, D)), ValueError, "k has shape (21, 2, 8)"),
    ("k_head_dim", dict(k=torch.randn(N, Hkv, D + 1)), ValueError, "k has shape"),
    ("v_shape", dict(v=torch.randn(N, 1, D)), ValueError, "v has shape (20, 1, 8) but k has"),
    ("gqa_not_multiple", dict(k=torch.randn(N, 3, D), v=torch.randn(N, 3, D)), ValueError, "multiple of the key/value heads"),
    ("empty_q", dict(q=torch.randn(0, Hq, D), k=torch.randn(0, Hkv, D), v=torch.randn(0, Hkv, D)), ValueError, "q must be non-empty"),
    ("cu_not_tensor", dict(cu_seqlens=[0, 7, 20]), TypeError, "cu_seqlens must be an int32 torch.Tensor"),
    ("cu_int64", dict(cu_seqlens=cu(0, 7, 20, dtype=torch.int64)), TypeError, "cu_seqlens must have dtype torch.int32"),
    ("cu_rank", dict(cu_seqlens=cu(0, 7, 20).view(1, 3)), ValueError, "cu_seqlens must be 1-D"),
    ("cu_too_short", dict(cu_seqlens=cu(0)), ValueError, "cu_seqlens must be 1-D with B + 1 >= 2"),
    ("cu_other_device", dict(cu_seqlens=torch.empty(3, dtype=torch.int32, device="meta")), ValueError, "cu_seqlens is on meta"),
    ("cu_not_from_0", dict(cu_seqlens=cu(1, 7, 20)), ValueError, "cu_seqlens must start at 0"),
    ("cu_not_increasing", dict(cu_seqlens=cu(0, 7, 7, 20)), ValueError, "cu_seqlens must be strictly increasing"),
    ("cu_decreasing", dict(cu_seqlens=cu(0, 12, 7, 20)), ValueError, "cu_seqlens[2] = 7 <= cu_seqlens[1] = 12"),
    ("cu_not_ending_at_N", dict(cu_seqlens=cu(0, 7, 19)), ValueError, "cu_seqlens must end at the number of tokens N = 20"),
    ("cu_past_N", dict(cu_seqlens=cu(0, 7, 21)), ValueError, "must end at the number of tokens"),
    ("max_seqlen_small", dict(max_seqlen=12), ValueError, "max_seqlen = 12 is smaller than the longest sequence in cu_seqlens (13)"),
    ("max_seqlen_float", dict(max_seqlen=13.0), TypeError, "max_seqlen must be an int"),
    ("max_seqlen_tensor", dict(max_seqlen=torch.tensor(13)), TypeError, "max_seqlen must be an int"),
    ("max_seqlen_zero", dict(max_seqlen=0), ValueError, "max_seqlen must be >= 1"),
    ("softmax_scale_negative", dict(softmax_scale=-1.0), ValueError, "softmax_scale must be finite and > 0"),
    ("softmax_scale_nan", dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be finite"),
    ("softmax_scale_str", dict(softmax_scale="0.1"), TypeError, "softmax_scale must be a float"),
]
BAD_MOBA = [
    ("chunk_zero", dict(moba_chunk_size=0), ValueError, "moba_chunk_size must be >= 1"),
    ("chunk_float", dict(moba_chunk_size=4.0), TypeError, "moba_chunk_size must be an int"),
    ("topk_zero", dict(moba_topk=0), ValueError, "moba_topk must be >= 1"),
    ("topk_bool", dict(moba_topk=True), TypeError, "moba_topk must be an int"),
]


@pytest.mark.parametrize("over,exc,text", [c[1:] for c in BAD + BAD_MOBA], ids=[c[0] for c in BAD + BAD_MOBA])
def test_moba_attn_varlen_bad_input(over, exc, text):
    with pytest.raises(exc, match=None) as e:
        call_moba(**over)
    assert "moba_attn_varlen" in str(e.value) and text in str(e.value), str(e.value)


@pytest.mark.parametrize("over,exc,text", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_flash_attn_varlen_bad_input(over, exc, text):
    with pytest.raises(exc) as e:
        call_dense(**over)
    assert "flash_attn_varlen" in str(e.value) and text in str(e.value), str(e.value)


GATE_BAD = [c for c in BAD + BAD_MOBA if not c[0].startswith(("v_", "softmax"))]


@pytest.mark.parametrize("over,exc,text", [c[1:] for c in GATE_BAD], ids=[c[0] for c in GATE_BAD])
def test_moba_gate_bad_input(over, exc, text):
    with pytest.raises(exc) as e:
        call_gate(**over)
    assert "moba_gate" in str(e.value) and text in str(e.value), str(e.value)


def test_causal_false_refused():
    with pytest.raises(ValueError, match="causal=False is not supported"):
        call_dense(causal=False)
    q = torch.randn(2, 5, 2, 4)
    with pytest.raises(ValueError, match="causal=False is not supported"):
        moba.flash_attn(q, q, q, causal=False)


def test_batched_bad_input():
    q, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8)
    with pytest.raises(ValueError, match="moba_attn: q must have 4 dimensions"):
        moba.moba_attn(q[0], k, k, 4, 2)
    with pytest.raises(ValueError, match=r"moba_attn: k has shape \(2, 6, 2, 8\)"):
        moba.moba_attn(q, torch.randn(2, 6, 2, 8), k, 4, 2)
    with pytest.raises(ValueError, match="flash_attn: q must have B >= 1"):
        moba.flash_attn(q[:0], k[:0], k[:0])
    with pytest.raises(ValueError, match="moba_attn: moba_topk must be >= 1"):
        moba.moba_attn(q, k, k, 4, 0)


def test_the_ops_also_refuse_bad_offsets():
    # torch.ops.moba.* called directly (no Python wrapper) still check cu_seqlens' contents.
    a = good()
    with pytest.raises(ValueError, match="cu_seqlens must end at the number of tokens"):
        torch.ops.moba.moba_attn_varlen(a["q"], a["k"], a["v"], cu(0, 7, 19), 13, 4, 2, 0.3)
    # And C++'s own checks come back as ValueError with its message, not a crash.
    with pytest.raises(ValueError, match="top-k K must be >= 1"):
        torch.ops.moba.moba_gate(a["q"], a["k"], a["cu_seqlens"], 13, 4, 0)


def test_the_raw_ops_check_dtypes_too():
    a = good()
    with pytest.raises(TypeError, match="flash_attn_varlen: q has dtype torch.bfloat16"):
        torch.ops.moba.flash_attn_varlen(a["q"].bfloat16(), a["k"].bfloat16(), a["v"].bfloat16(),
                                         a["cu_seqlens"], 13, 0.3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real CUDA path")
def test_cuda_branch_plumbing_without_a_gpu(monkeypatch):
    # Without a GPU, drive the ops' CUDA branch (stream 0) with CPU buffers: every ctypes
    # signature is exercised and the library answers with an error message (no CUDA device,
    # or a build without CUDA) instead of a crash or a ctypes ArgumentError.
    import moba.ops as ops

    class FakeCuda:
        def __init__(self, q):
            pass

        def __enter__(self):
            return 0

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(ops, "_OnDevice", FakeCuda)
    a = good()
    q, k, v, cu_t = a["q"], a["k"], a["v"], a["cu_seqlens"]
    meta = torch.tensor([5, 0, 7, 20], dtype=torch.int64)
    sel = torch.zeros(N, Hq, 2, dtype=torch.int32)
    lse = torch.zeros(N, Hq)
    calls = [
        lambda: ops.moba_gate_op(q, k, cu_t, 13, 4, 2),
        lambda: ops.moba_attn_varlen_op(q, k, v, cu_t, 13, 4, 2, 0.3),
        lambda: ops.moba_attn_varlen_backward_op(q, q, k, v, q, lse, sel, meta, 4, 2, 0.3),
        lambda: ops.flash_attn_varlen_op(q, k, v, cu_t, 13, 0.3),
        lambda: ops.flash_attn_varlen_backward_op(q, q, k, v, q, lse, meta, 0.3),
    ]
    for call in calls:
        with pytest.raises(moba.MobaOpsError, match="CUDA error|built without CUDA"):
            call()
    assert moba.wgmma_available() is False
