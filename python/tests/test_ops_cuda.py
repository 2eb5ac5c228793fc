"""The ops on bf16 CUDA tensors against a float64 reference, bound 2x the naive bf16
error (the rule of tests/attention_gpu/attention_gpu_test.cpp), forward and backward:
GQA, varlen with tiny sequences, S = 64 (mma.sync path), 128, 256, 1024, K = 2..8, head
dims 64 and 128; each case with the default kernels (wgmma on sm_90a) and with every
MOBA_* switch set to mma (the Ampere/Ada path). Attention is compared on the GPU gate's
selection; the gate is checked apart against the CPU gate, allowing different picks only
for rounding ties. Skipped without a CUDA device.

For a build from compute_80 PTX only (docs/python.md), run with MOBA_EXPECT_WGMMA=0.
"""
import os
import zlib

import pytest
import torch

import moba
import moba_reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEV = "cuda"
SWITCHES = ("MOBA_DENSE_FWD", "MOBA_DENSE_BWD", "MOBA_MOBA_FWD", "MOBA_MOBA_BWD")


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the naive bf16 version computes in fp32
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(params=["default", "mma"])
def kernels(request, monkeypatch):
    """The MOBA_* switches are read on every call (src/attention/cuda): set per test."""
    for var in SWITCHES:
        if request.param == "mma":
            monkeypatch.setenv(var, "mma")
        else:
            monkeypatch.delenv(var, raising=False)
    return request.param


def max_rel_err(got, want):
    """max |got - want| / max(1, max |want|), as tests/attention/*.h."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp(min=1.0)).item()


def bound_for(naive_err):
    return 2.0 * naive_err + 1e-5


def bf16r(x):
    return x.to(torch.bfloat16).float()


def naive_bf16(q, k, v, dout, cu, S, sel, scale):
    """tests/attention_gpu/naive_bf16.h in torch: fp32 maths with bf16 rounding where a
    straightforward bf16 implementation has it (inputs, P before P.V, dS, outputs)."""
    q, k, v, dout = (t.float() for t in (q, k, v, dout))
    N, Hq, D = q.shape
    G = Hq // k.shape[1]
    out, lse = torch.empty_like(q), torch.empty(N, Hq, device=q.device)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for b in range(len(cu) - 1):
        s0, s1 = cu[b], cu[b + 1]
        m = ref.mask(sel, s0, s1, S, Hq, q.device)                        # (L, Hq, L)
        qs, ks, vs = q[s0:s1], ref.expand_kv(k[s0:s1], Hq), ref.expand_kv(v[s0:s1], Hq)
        s = (torch.einsum("thd,shd->ths", qs, ks) * scale).masked_fill(~m, float("-inf"))
        mx = s.amax(-1, keepdim=True)
        p = torch.exp(s - mx)
        sm = p.sum(-1)
        o = bf16r(torch.einsum("ths,shd->thd", bf16r(p), vs) / sm.unsqueeze(-1))
        out[s0:s1], lse[s0:s1] = o, mx.squeeze(-1) + torch.log(sm)
        do = dout[s0:s1]
        delta = (do * o).sum(-1, keepdim=True)                            # (L, Hq, 1)
        p = torch.exp(s - lse[s0:s1].unsqueeze(-1))
        ds = bf16r(p * (torch.einsum("thd,shd->ths", do, vs) - delta))
        dq[s0:s1] = bf16r(scale * torch.einsum("ths,shd->thd", ds, ks))
        dk_h = torch.einsum("ths,thd->shd", ds, qs)                       # (L, Hq, D)
        dv_h = torch.einsum("ths,thd->shd", bf16r(p), do)
        L = s1 - s0
        dk[s0:s1] = bf16r(scale * dk_h.view(L, -1, G, D).sum(2))
        dv[s0:s1] = bf16r(dv_h.view(L, -1, G, D).sum(2))
    return out, lse, dq, dk, dv


def check_gate(q, k, cu, S, K, gpu_sel):
    """GPU picks may differ from the CPU gate's only at fp32 rounding ties."""
    cu_t = torch.tensor(cu, dtype=torch.int32)
    qf, kf = q.float().cpu(), k.float().cpu()
    cpu_sel = moba.moba_gate(qf, kf, cu_t, max(b - a for a, b in zip(cu, cu[1:])), S, K)
    gpu_sel = gpu_sel.cpu()
    assert gpu_sel.shape == cpu_sel.shape
    rows = (gpu_sel != cpu_sel).any(-1).nonzero().tolist()
    Hq, Hkv = q.shape[1], k.shape[1]
    for tok, h in rows:
        b = max(i for i in range(len(cu) - 1) if cu[i] <= tok)
        s0 = cu[b]
        t = tok - s0
        c = t // S
        kb = kf[s0: s0 + (c * S), h // (Hq // Hkv)].double()
        means = kb.view(c, S, -1).mean(1).float().double() if c > 0 else None

        def score(j):
            prod = qf[tok, h].double() * means[j]
            return prod.sum().item(), prod.abs().sum().item()

        a, w = gpu_sel[tok, h].tolist(), cpu_sel[tok, h].tolist()
        assert c in a, f"gate: token {tok} head {h} lacks its current block {c}: {a}"
        past_cpu = [j for j in w if 0 <= j < c]
        worst = min((score(j) for j in past_cpu), default=(float("inf"), 0.0))
        for j in (j for j in a if 0 <= j < c):
            sj, mag = score(j)
            assert sj >= worst[0] - 1e-5 * max(mag, worst[1]), (
                f"gate: token {tok} head {h} picked block {j}, no tie with the CPU picks {w}")
    return len(rows)


def bf16_inputs(cu, Hq, Hkv, D, seed):
    g = torch.Generator().manual_seed(seed)
    N = cu[-1]
    mk = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).to(DEV)
    return mk(N, Hq, D), mk(N, Hkv, D), mk(N, Hkv, D), mk(N, Hq, D)


# (name, cu_seqlens, Hq, Hkv, D, S, K); K = 0: dense attention.
CASES = [
    ("dense_gqa4_d128", [0, 1000], 4, 1, 128, 0, 0),
    ("dense_varlen_tiny_d64", [0, 1, 2, 78, 600, 1777], 2, 2, 64, 0, 0),
    ("s128_k3_gqa4_d128", [0, 1500], 8, 2, 128, 128, 3),
    ("s128_k2_varlen_tiny_d64", [0, 1, 2, 130, 131, 700, 1800], 4, 4, 64, 128, 2),
    ("s128_k7_d128", [0, 1000, 2100], 2, 1, 128, 128, 7),
    ("s256_k4_gqa4_d128", [0, 3000], 4, 1, 128, 256, 4),
    ("s256_k6_gqa2_d64", [0, 5, 2600], 4, 2, 64, 256, 6),
    ("s1024_k5_d64", [0, 7000], 2, 1, 64, 1024, 5),
    ("s1024_k8_varlen_d128", [0, 3, 4100, 9300], 2, 2, 128, 1024, 8),
    ("s1024_k2_d128", [0, 6000], 2, 1, 128, 1024, 2),
    ("s64_k3_gqa4_d128", [0, 1500], 4, 1, 128, 64, 3),     # S = 64: mma.sync kernels
    ("s64_k2_varlen_tiny_d64", [0, 1, 64, 65, 700], 2, 1, 64, 64, 2),
    ("s128_k9_ge_blocks_d64", [0, 1, 1000], 2, 1, 64, 128, 9),  # K >= blocks: dense
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bf16_against_float64_reference(case, kernels):
    name, cu, Hq, Hkv, D, S, K = case
    moba_case = K > 0
    q, k, v, dout = bf16_inputs(cu, Hq, Hkv, D, seed=zlib.crc32(name.encode()))
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    T = max(b - a for a, b in zip(cu, cu[1:]))
    scale = D ** -0.5
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    if moba_case:
        out, lse = moba.moba_attn_varlen(qg, kg, vg, cu_t, T, S, K, return_lse=True)
        sel = moba.moba_gate(q, k, cu_t, T, S, K)
        differ = check_gate(q, k, cu, S, K, sel)
        print(f"  gate: {differ} rows differ from the CPU gate, all rounding ties")
    else:
        out, lse = moba.flash_attn_varlen(qg, kg, vg, cu_t, T, return_lse=True)
        sel = None
    out.backward(dout)
    torch.cuda.synchronize()
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32

    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    r_out, r_lse = ref.attention(q64, k64, v64, cu, S, sel, scale)
    r_out.backward(dout.double())
    nv = naive_bf16(q, k, v, dout, cu, S, sel, scale)
    for what, got, want, naive in (("out", out, r_out.detach(), nv[0]),
                                   ("lse", lse, r_lse.detach(), nv[1]),
                                   ("dq", qg.grad, q64.grad, nv[2]),
                                   ("dk", kg.grad, k64.grad, nv[3]),
                                   ("dv", vg.grad, v64.grad, nv[4])):
        assert torch.isfinite(got).all(), f"{what}: NaN or inf"
        eg, en = max_rel_err(got, want), max_rel_err(naive, want)
        print(f"  {what:4s} gpu err {eg:.3e}  naive bf16 err {en:.3e}  bound {bound_for(en):.3e}")
        assert eg <= bound_for(en), f"{what}: gpu err {eg:.3e} > bound {bound_for(en):.3e}"

    if moba_case and K >= (T + S - 1) // S:  # K covers every block: MoBA is dense
        dense = moba.flash_attn_varlen(q, k, v, cu_t, T)
        assert max_rel_err(dense, out) <= bound_for(max_rel_err(nv[0], r_out))


def grads(fn, inputs, dout):
    x = [t.clone().requires_grad_() for t in inputs]
    fn(*x).backward(dout)
    return [t.grad for t in x]


def test_interleaved_layers_and_rebuilt_gather_lists():
    # Two layers of one shape (one plan): both forwards, then both backwards, as in a
    # model. The plan's gather lists are the second layer's when the first layer's
    # backward runs; its generation id must force a rebuild (src/pyops/moba_ops_cuda.cpp).
    cu, S, K, T = [0, 700, 2000], 128, 3, 1300
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    f = lambda q, k, v: moba.moba_attn_varlen(q, k, v, cu_t, T, S, K)
    a = bf16_inputs(cu, 4, 2, 128, seed=1)
    b = bf16_inputs(cu, 4, 2, 128, seed=2)
    ga, gb = grads(f, a[:3], a[3]), grads(f, b[:3], b[3])
    xa = [t.clone().requires_grad_() for t in a[:3]]
    xb = [t.clone().requires_grad_() for t in b[:3]]
    oa, ob = f(*xa), f(*xb)
    ((oa.float() * a[3].float()).sum() + (ob.float() * b[3].float()).sum()).backward()
    for got, want in zip([t.grad for t in xa + xb], ga + gb):
        # dK/dV sums use atomics: equal up to the last bits; other lists would be O(1) off.
        assert max_rel_err(got, want) < 2e-2
    # The backward op with an unknown generation (-1) rebuilds the lists itself.
    out, lse, sel, meta = torch.ops.moba.moba_attn_varlen(*a[:3], cu_t, T, S, K, 128 ** -0.5)
    meta[0] = -1
    dq, dk, dv = torch.ops.moba.moba_attn_varlen_backward(a[3], *a[:3], out, lse, sel, meta,
                                                          S, K, 128 ** -0.5)
    for got, want in zip((dq, dk, dv), ga):
        assert max_rel_err(got, want) < 2e-2


def test_batched_and_compiled_on_cuda():
    B, T, Hq, Hkv, D = 2, 512, 4, 2, 64
    g = torch.Generator().manual_seed(5)
    mk = lambda h: torch.randn(B, T, h, D, generator=g).to(DEV, torch.bfloat16).requires_grad_()
    q, k, v = mk(Hq), mk(Hkv), mk(Hkv)

    def f(q, k, v):
        return moba.moba_attn(q, k, v, 128, 2).float().square().sum() + \
            moba.flash_attn(q, k, v).float().square().sum()

    want = f(q, k, v)
    want.backward()
    wg = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(q, k, v)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    for t, w in zip((q, k, v), wg):
        assert max_rel_err(t.grad, w) < 1e-2


def test_package_built_with_cuda():
    assert moba.HAS_CUDA, "a CUDA device is present but the package was built without CUDA"


def test_wgmma_available_matches_device_and_build():
    cc = torch.cuda.get_device_capability()
    expect = os.environ.get("MOBA_EXPECT_WGMMA")
    want = (expect == "1") if expect is not None else cc == (9, 0)
    for D in (64, 128):
        assert moba.wgmma_available(D) == want, (cc, D)
    assert not moba.wgmma_available(96)


def test_cuda_bad_input():
    cu_t = torch.tensor([0, 256], dtype=torch.int32, device=DEV)
    q = torch.randn(256, 2, 64, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="q has dtype torch.float16; the CUDA kernels take torch.bfloat16"):
        moba.moba_attn_varlen(q.half(), q.half(), q.half(), cu_t, 256, 64, 2)
    with pytest.raises(TypeError, match="q has dtype torch.float32"):
        moba.flash_attn_varlen(q.float(), q.float(), q.float(), cu_t, 256)
    q96 = torch.randn(256, 2, 96, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim 96 has no CUDA kernel"):
        moba.moba_attn_varlen(q96, q96, q96, cu_t, 256, 64, 2)
    for S in (32, 96, 0):
        with pytest.raises(ValueError, match="moba_chunk_size must be a power of two >= 64"):
            moba.moba_attn_varlen(q, q, q, cu_t, 256, S, 2)
    with pytest.raises(ValueError, match=r"moba_topk must be in 1\.\.16"):
        moba.moba_attn_varlen(q, q, q, cu_t, 256, 64, 17)
    with pytest.raises(ValueError, match="cu_seqlens is on cpu but q is on cuda"):
        moba.moba_attn_varlen(q, q, q, cu_t.cpu(), 256, 64, 2)
    with pytest.raises(ValueError, match="k is on cpu but q is on cuda"):
        moba.moba_attn_varlen(q, q.cpu(), q, cu_t, 256, 64, 2)
    with pytest.raises(ValueError, match="cu_seqlens must end at the number of tokens"):
        moba.moba_attn_varlen(q, q, q, torch.tensor([0, 255], dtype=torch.int32, device=DEV),
                              256, 64, 2)
