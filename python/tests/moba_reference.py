"""Plain PyTorch MoBA, written from docs/moba.md for the tests (not the ops' code path).

Per sequence: blocks of S tokens from the sequence start; query t's current block is
c = t // S; candidates are the full blocks j < c scored by q_t . mean(k over block j)
(means and scores accumulated in double, rounded to fp32); the current block plus the
K-1 best candidates are selected, ties to the more recent block; attention over every key
of the selected past blocks and keys <= t of the current block.
Shapes: q (N, Hq, D), k/v (N, Hkv, D), sel (N, Hq, K) int32, mask (L, Hq, L) per sequence.
"""
from __future__ import annotations

import torch


def expand_kv(x: torch.Tensor, Hq: int) -> torch.Tensor:
    """(L, Hkv, D) -> (L, Hq, D): query head h reads kv head h // (Hq // Hkv)."""
    return x.repeat_interleave(Hq // x.shape[1], dim=1)


def selection(q, k, cu, S: int, K: int) -> torch.Tensor:
    """The gate of docs/moba.md: int32 (N, Hq, K), ascending, padded with -1."""
    N, Hq, _ = q.shape
    sel = torch.full((N, Hq, K), -1, dtype=torch.int32)
    for b in range(len(cu) - 1):
        s0, s1 = cu[b], cu[b + 1]
        L = s1 - s0
        qs = q[s0:s1].double().cpu()
        ks = expand_kv(k[s0:s1].double().cpu(), Hq)
        nfull = L // S
        if nfull > 0:
            means = ks[: nfull * S].reshape(nfull, S, Hq, -1).mean(1).float().double()  # (nfull, Hq, D)
            scores = torch.einsum("thd,jhd->thj", qs, means).float()                  # (L, Hq, nfull)
        for t in range(L):
            c = t // S
            for h in range(Hq):
                cand = list(range(min(c, nfull)))
                # Highest score first; among equal scores the more recent block first.
                cand.sort(key=lambda j: (-float(scores[t, h, j]), -j))
                picks = sorted(cand[: K - 1] + [c])
                sel[s0 + t, h, : len(picks)] = torch.tensor(picks, dtype=torch.int32)
    return sel


def mask_of(sel_seq: torch.Tensor, L: int, S: int) -> torch.Tensor:
    """Allowed (query, head, key) of one sequence from its selection (L, Hq, K): bool
    (L, Hq, L)."""
    Hq = sel_seq.shape[1]
    t = torch.arange(L, device=sel_seq.device)
    key_block = t // S                                           # (L,)
    cur = (t // S).view(L, 1, 1)                                 # (L, 1, 1)
    picked = (sel_seq.long().unsqueeze(-1) == key_block.view(1, 1, 1, L)).any(2)  # (L, Hq, L)
    causal = t.view(L, 1, 1) >= t.view(1, 1, L)                  # (L, 1, L)
    past = key_block.view(1, 1, L) < cur
    return picked & (past | causal) & (key_block.view(1, 1, L) <= cur)


def mask(sel, s0: int, s1: int, S: int, Hq: int, device) -> torch.Tensor:
    """Allowed (query, head, key) of the sequence [s0, s1): bool (L, Hq, L) on `device`;
    sel None: dense causal."""
    L = s1 - s0
    if sel is None:
        t = torch.arange(L, device=device)
        return (t.view(L, 1, 1) >= t.view(1, 1, L)).expand(L, Hq, L)
    return mask_of(sel[s0:s1].to(device), L, S)


def attention(q, k, v, cu, S: int, sel, scale=None):
    """MoBA attention over a given selection (sel None: dense causal). Differentiable;
    computed in q's dtype on q's device. Returns out (N, Hq, D), lse (N, Hq)."""
    N, Hq, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    outs, lses = [], []
    for b in range(len(cu) - 1):
        s0, s1 = cu[b], cu[b + 1]
        L = s1 - s0
        m = mask(sel, s0, s1, S, Hq, q.device)
        qs, ks, vs = q[s0:s1], expand_kv(k[s0:s1], Hq), expand_kv(v[s0:s1], Hq)
        s = torch.einsum("thd,shd->ths", qs, ks) * scale          # (L, Hq, L)
        s = s.masked_fill(~m, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)                          # (L, Hq)
        p = torch.exp(s - lse.unsqueeze(-1))
        outs.append(torch.einsum("ths,shd->thd", p, vs))
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def moba(q, k, v, cu, S: int, K: int, scale=None):
    """The whole of MoBA: gate, then attention. Returns out, lse, sel."""
    sel = selection(q.detach(), k.detach(), cu, S, K)
    out, lse = attention(q, k, v, cu, S, sel, scale)
    return out, lse, sel
