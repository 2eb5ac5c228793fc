"""The ops on CPU tensors (the C++ reference underneath) against a plain PyTorch MoBA
(moba_reference.py, the exact mask of docs/moba.md), gradcheck, torch.compile."""
import pytest
import torch

import moba
import moba_reference as ref

# (cu_seqlens, Hq, Hkv, D, S, K): varlen, GQA, one-token sequences, partial last blocks.
CASES = [
    ([0, 40], 2, 2, 8, 8, 3),
    ([0, 1, 17, 18, 50], 4, 2, 16, 4, 2),      # varlen, length-1 sequences, GQA 2:1
    ([0, 33, 97], 6, 2, 8, 16, 1),             # K = 1: current block only
    ([0, 1], 2, 1, 8, 4, 3),                   # a single token
    ([0, 64, 100], 4, 1, 32, 8, 4),            # GQA 4:1
    ([0, 5, 71], 2, 1, 4, 3, 5),               # S not a power of two
]


def inputs(cu, Hq, Hkv, D, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    N = cu[-1]
    q = torch.randn(N, Hq, D, generator=g, dtype=dtype)
    k = torch.randn(N, Hkv, D, generator=g, dtype=dtype)
    v = torch.randn(N, Hkv, D, generator=g, dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, torch.tensor(cu, dtype=torch.int32)


def max_len(cu):
    return max(b - a for a, b in zip(cu, cu[1:]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"cu{len(c[0]) - 1}_h{c[1]}x{c[2]}_d{c[3]}_s{c[4]}_k{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moba_matches_pytorch_reference(case, dtype):
    cu, Hq, Hkv, D, S, K = case
    q, k, v, cu_t = inputs(cu, Hq, Hkv, D, dtype, requires_grad=True)
    out, lse = moba.moba_attn_varlen(q, k, v, cu_t, max_len(cu), S, K, return_lse=True)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == q.shape[:2]
    # The gate against the test's own selection (exact: same fp32 rounding rules).
    sel = moba.moba_gate(q, k, cu_t, max_len(cu), S, K)
    want_sel = ref.selection(q.detach(), k.detach(), cu, S, K)
    assert sel.dtype == torch.int32 and sel.shape == (cu[-1], Hq, K)
    assert torch.equal(sel, want_sel)
    # Attention and gradients against the reference (autograd through the exact mask).
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out, want_lse = ref.attention(q64, k64, v64, cu, S, want_sel)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), want_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), want_lse, rtol=tol, atol=tol)
    dout = torch.randn_like(want_out)
    (out.double() * dout).sum().backward()
    (want_out * dout).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=tol * 10, atol=tol * 10)


def test_gate_ties_go_to_the_more_recent_block():
    # Every key equal: all past blocks score the same, so the most recent K-1 win.
    cu, Hq, D, S, K = [0, 30], 2, 4, 4, 3
    q = torch.randn(30, Hq, D, dtype=torch.float64)
    k = torch.ones(30, 1, D, dtype=torch.float64)
    sel = moba.moba_gate(q, k, torch.tensor(cu, dtype=torch.int32), 30, S, K)
    assert sel[29, 0].tolist() == [5, 6, 7]       # token 29: block 7, past 5 and 6
    assert sel[9, 1].tolist() == [0, 1, 2]        # block 2: both past blocks fit
    assert sel[2, 0].tolist() == [0, -1, -1]      # block 0: padded
    assert torch.equal(sel, ref.selection(q, k, cu, S, K))


@pytest.mark.parametrize("cu,S,K", [([0, 20], 4, 5), ([0, 1, 9, 30], 8, 4), ([0, 7], 64, 1)])
def test_k_covering_every_block_is_dense(cu, S, K):
    q, k, v, cu_t = inputs(cu, 4, 2, 8)
    got = moba.moba_attn_varlen(q, k, v, cu_t, max_len(cu), S, K)
    dense = moba.flash_attn_varlen(q, k, v, cu_t, max_len(cu))
    want, _ = ref.attention(q, k, v, cu, S, None)
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense, want, rtol=1e-12, atol=1e-12)


def test_dense_matches_sdpa_per_sequence():
    cu = [0, 1, 13, 40]
    q, k, v, cu_t = inputs(cu, 4, 2, 16)
    out, lse = moba.flash_attn_varlen(q, k, v, cu_t, 27, softmax_scale=0.3, return_lse=True)
    for a, b in zip(cu, cu[1:]):
        want = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), ref.expand_kv(k[a:b], 4).transpose(0, 1),
            ref.expand_kv(v[a:b], 4).transpose(0, 1), is_causal=True, scale=0.3).transpose(0, 1)
        torch.testing.assert_close(out[a:b], want, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(lse).all()


def test_batched_wrappers_match_varlen():
    B, T, Hq, Hkv, D = 3, 21, 4, 2, 8
    q = torch.randn(B, T, Hq, D, dtype=torch.float64)
    k = torch.randn(B, T, Hkv, D, dtype=torch.float64)
    v = torch.randn(B, T, Hkv, D, dtype=torch.float64)
    cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32)
    pack = lambda t: t.reshape(B * T, t.shape[2], D)
    got = moba.moba_attn(q, k, v, 4, 2)
    want = moba.moba_attn_varlen(pack(q), pack(k), pack(v), cu, T, 4, 2)
    assert got.shape == (B, T, Hq, D)
    torch.testing.assert_close(pack(got), want, rtol=0, atol=0)
    got = moba.flash_attn(q, k, v, softmax_scale=0.5)
    want = moba.flash_attn_varlen(pack(q), pack(k), pack(v), cu, T, softmax_scale=0.5)
    torch.testing.assert_close(pack(got), want, rtol=0, atol=0)


def test_non_contiguous_inputs_are_made_contiguous():
    cu = [0, 9, 30]
    q, k, v, cu_t = inputs(cu, 2, 2, 8)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not qt.is_contiguous()
    torch.testing.assert_close(moba.moba_attn_varlen(qt, k, v, cu_t, 21, 4, 2),
                               moba.moba_attn_varlen(q, k, v, cu_t, 21, 4, 2), rtol=0, atol=0)


def test_gradcheck_moba_float64():
    cu = [0, 5, 6, 14]
    q, k, v, cu_t = inputs(cu, 2, 1, 4, requires_grad=True, seed=3)
    f = lambda a, b, c: moba.moba_attn_varlen(a, b, c, cu_t, 8, 3, 2)
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_gradcheck_dense_float64():
    cu = [0, 5, 6, 14]
    q, k, v, cu_t = inputs(cu, 2, 1, 4, requires_grad=True, seed=4)
    f = lambda a, b, c: moba.flash_attn_varlen(a, b, c, cu_t, 8, softmax_scale=0.7)
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_lse_has_no_gradient():
    q, k, v, cu_t = inputs([0, 12], 2, 2, 4, requires_grad=True)
    out, lse = moba.moba_attn_varlen(q, k, v, cu_t, 12, 4, 2, return_lse=True)
    assert out.requires_grad and not lse.requires_grad


def test_opcheck():
    q, k, v, cu_t = inputs([0, 3, 20], 2, 1, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.moba.moba_attn_varlen.default, (q, k, v, cu_t, 17, 4, 2, 0.35))
    torch.library.opcheck(torch.ops.moba.flash_attn_varlen.default, (q, k, v, cu_t, 17, 0.35))
    torch.library.opcheck(torch.ops.moba.moba_gate.default, (q.detach(), k.detach(), cu_t, 17, 4, 2))


class TwoLayer(torch.nn.Module):
    """One MoBA layer and one dense layer over packed sequences."""

    def __init__(self, C, Hq, Hkv, D):
        super().__init__()
        self.Hq, self.Hkv, self.D = Hq, Hkv, D
        self.qkv1 = torch.nn.Linear(C, (Hq + 2 * Hkv) * D, dtype=torch.float64)
        self.qkv2 = torch.nn.Linear(C, (Hq + 2 * Hkv) * D, dtype=torch.float64)
        self.o = torch.nn.Linear(Hq * D, C, dtype=torch.float64)

    def split(self, lin, x):
        y = lin(x)
        q, k, v = y.split([self.Hq * self.D, self.Hkv * self.D, self.Hkv * self.D], dim=-1)
        return (q.view(-1, self.Hq, self.D), k.view(-1, self.Hkv, self.D),
                v.view(-1, self.Hkv, self.D))

    def forward(self, x, cu, max_seqlen):
        h = moba.moba_attn_varlen(*self.split(self.qkv1, x), cu, max_seqlen, 4, 2)
        x = x + self.o(h.reshape(x.shape[0], -1))
        h = moba.flash_attn_varlen(*self.split(self.qkv2, x), cu, max_seqlen)
        return x + self.o(h.reshape(x.shape[0], -1))


def test_torch_compile_fullgraph_forward_backward():
    torch.manual_seed(0)
    m = TwoLayer(16, 4, 2, 8)
    cu = torch.tensor([0, 7, 8, 30], dtype=torch.int32)
    x = torch.randn(30, 16, dtype=torch.float64)

    def loss_of(fn):
        m.zero_grad()
        loss = fn(x, cu, 22).square().sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    want_loss, want_grads = loss_of(m)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)  # fails on any graph break
    got_loss, got_grads = loss_of(compiled)
    torch.testing.assert_close(got_loss, want_loss)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
