"""The public functions take a plain autograd.Function in eager mode and the registered
custom ops (torch.ops.moba.*) when traced: both must give the same outputs and gradients."""
import torch

import moba
from moba import ops


def _inputs(N=70, Hq=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda h: torch.randn(N, h, D, generator=g, dtype=torch.float64, requires_grad=True)
    return mk(Hq), mk(Hkv), mk(Hkv), torch.tensor([0, 9, 40, N], dtype=torch.int32)


def test_eager_path_is_taken_and_equals_the_custom_op():
    q, k, v, cu = _inputs()
    assert ops._eager(q, k, v, cu)
    do = torch.randn(q.shape, dtype=torch.float64)
    for name in ("moba", "dense"):
        if name == "moba":
            fast, lse = moba.moba_attn_varlen(q, k, v, cu, 31, 8, 3, return_lse=True)
            ref, ref_lse, _, _ = torch.ops.moba.moba_attn_varlen(q, k, v, cu, 31, 8, 3, 0.25)
        else:
            fast, lse = moba.flash_attn_varlen(q, k, v, cu, 31, return_lse=True)
            ref, ref_lse, _ = torch.ops.moba.flash_attn_varlen(q, k, v, cu, 31, 0.25)
        assert torch.equal(fast, ref) and torch.equal(lse, ref_lse)
        assert not lse.requires_grad
        g_fast = torch.autograd.grad(fast, (q, k, v), do)
        g_ref = torch.autograd.grad(ref, (q, k, v), do)
        for a, b in zip(g_fast, g_ref):
            assert torch.equal(a, b)


def test_traced_calls_take_the_custom_op():
    q, k, v, cu = _inputs()
    with torch.device("meta"):
        qm = torch.empty(q.shape, dtype=q.dtype)
    assert not ops._eager(qm, k, v, cu)
