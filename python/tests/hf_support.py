"""Helpers of the HF tests (test_hf_*.py): the moba CLI, the ops, a plain PyTorch MoBA.

The tests run against the real package (`import moba`, built by `pip install .`); without
its ops they skip. The plain PyTorch MoBA below is only a reference to compare with.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]


def moba_bin() -> str:
    """The moba CLI: $MOBA_BIN, else build/src/cli/moba of the repository; skips if missing."""
    path = os.environ.get("MOBA_BIN") or str(REPO / "build" / "src" / "cli" / "moba")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        pytest.skip(f"the moba CLI is not at {path} (build it, or set MOBA_BIN)")
    return path


def run_moba(*args, check=True, cwd=None) -> subprocess.CompletedProcess:
    """Runs `moba ARGS...`; returns the completed process (stdout, stderr as text)."""
    p = subprocess.run([moba_bin(), *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"moba {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def ops():
    """The `moba` package with its ops (skips without them)."""
    try:
        import moba
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"the moba package is not importable ({e})")
    if hasattr(moba, "moba_attn_varlen") and hasattr(moba, "flash_attn_varlen"):
        return moba
    pytest.skip("the moba package has no ops (moba_attn_varlen): pip install . first")


# --- plain PyTorch MoBA (docs/moba.md), exact mask, for checking -------------------------

def moba_mask(q, k, cu_seqlens, chunk, topk):
    """Boolean (Hq, N, N) mask of MoBA attention over packed tokens: query t of a sequence
    attends the keys of its selected blocks (the current one up to t). q (N, Hq, D),
    k (N, Hkv, D). Gate: q . mean(k of a full past block); the current block and the
    topk - 1 best past blocks (ties to the more recent block)."""
    n, hq, _ = q.shape
    group = hq // k.shape[1]
    mask = torch.zeros(hq, n, n, dtype=torch.bool)
    cu = [int(x) for x in cu_seqlens]
    for s, e in zip(cu[:-1], cu[1:]):
        length = e - s
        qs = q[s:e].double().transpose(0, 1)                           # (Hq, L, D)
        ks = k[s:e].double().repeat_interleave(group, dim=1).transpose(0, 1)  # (Hq, L, D)
        t = torch.arange(length)
        cur = t // chunk
        nfull, nblocks = length // chunk, (length + chunk - 1) // chunk
        sel = cur[None, :, None] == torch.arange(nblocks)[None, None, :]
        sel = sel.expand(hq, length, -1).clone()                        # (Hq, L, blocks)
        if nfull > 0 and topk > 1:
            means = ks[:, : nfull * chunk].reshape(hq, nfull, chunk, -1).mean(2)
            score = (qs @ means.transpose(1, 2)).float().double()      # (Hq, L, nfull)
            j = torch.arange(nfull)
            past = j[None, :] < cur[:, None]                            # (L, nfull)
            # ties to the more recent block: a tiny recency bonus below float resolution
            score = torch.where(past, score + j * 1e-12, torch.tensor(float("-inf"), dtype=torch.float64))
            kk = min(topk - 1, nfull)
            best = score.topk(kk, dim=-1)
            chosen = torch.zeros(hq, length, nfull, dtype=torch.bool)
            chosen.scatter_(-1, best.indices, torch.isfinite(best.values))
            sel[:, :, :nfull] |= chosen
        kb = t // chunk                                                 # block of each key
        allowed = sel.gather(-1, kb[None, None, :].expand(hq, length, length))
        causal = t[None, :] <= t[:, None]
        mask[:, s:e, s:e] = allowed & causal
    return mask


def _masked_attention(q, k, v, mask, scale):
    hq, hkv = q.shape[1], k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kr = k.repeat_interleave(hq // hkv, dim=1)
    vr = v.repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("nhd,mhd->hnm", q, kr) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("hnm,mhd->nhd", torch.softmax(s, dim=-1), vr)


def reference_moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk, *,
                               softmax_scale=None, return_lse=False):
    with torch.no_grad():
        mask = moba_mask(q.detach(), k.detach(), cu_seqlens.cpu(), moba_chunk_size, moba_topk)
    return _masked_attention(q, k, v, mask.to(q.device), softmax_scale)


def reference_flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, causal=True, softmax_scale=None,
                                return_lse=False):
    n = q.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool)
    cu = [int(x) for x in cu_seqlens]
    for s, e in zip(cu[:-1], cu[1:]):
        mask[s:e, s:e] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
    return _masked_attention(q, k, v, mask[None].expand(q.shape[1], n, n).to(q.device),
                             softmax_scale)


def reference_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                dropout=0.0, *, chunk, topk, **kwargs):
    """A transformers attention function: exact-mask MoBA in plain PyTorch over the rows
    of a batch (one sequence per row), for comparing with "moba"."""
    b, hq, t, d = query.shape
    q = query.transpose(1, 2).reshape(b * t, hq, d)
    k = key.transpose(1, 2).reshape(b * t, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * t, value.shape[1], d)
    cu = torch.arange(0, (b + 1) * t, t)
    out = reference_moba_attn_varlen(q, k, v, cu, t, chunk, topk, softmax_scale=scaling)
    return out.reshape(b, t, hq, d), None


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
    kw.update(overrides)
    return LlamaConfig(**kw)
