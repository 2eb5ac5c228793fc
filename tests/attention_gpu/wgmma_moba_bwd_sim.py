#!/usr/bin/env python3
# CPU model of attn_bwd_moba_wgmma_kernel's bookkeeping (src/attention/cuda/bwd_moba_wgmma.cuh)
# in fp64, against an fp64 MoBA reference backward on a random selection. Not part of CI
# (needs numpy): run it by hand after changing the kernel's tile sources, masks, gathered-row
# placement or dQ scatter:  python3 tests/attention_gpu/wgmma_moba_bwd_sim.py [--bulk] [N cases]
# Modelled as the hardware does (as documented in wgmma.cuh and validated on the H100 by the
# dense wgmma kernels): the TMA 128-byte swizzle of a box (chunk c of row r at c ^ (r % 8)),
# zero fill past N, the K-major / MN-major operand reads of the descriptors, the accumulator
# layout. The MMA steps themselves are done at the logical level (as products of the
# operand tiles read back through the descriptors), since they are shared with the dense
# kernel (bwd_wgmma_common.cuh) and modelled in wgmma_bwd_sim.py.
# Transcribed from the kernel: the causal tile range (key tile .. end of its block), the
# gathered tiles (bucket entries, Br per tile, padding rows), the producer's chunk -> thread
# mapping and hand-swizzled destinations, zero-filled padding, lse / delta per row
# (transposed arrays), the masks (unified form), the row ids and the dQ scatter, the causal
# dQ reduce-add boxes and their skip rule, the epilogue. Not modelled: synchronisation.
# Mutations that make it fail (checked when written): no swizzle on the gathered rows'
# destinations, no entry prefetch, lse / delta read at offset 0 for causal tiles, the row
# id of the wrong tile row in the dQ scatter, the wrong head in the lse index. (Masking
# causal tiles at the sequence end instead of the block end does not change anything: a
# causal tile starts 128k tokens into its block and Br divides 128, so it crosses the
# block end only where the block ends the sequence.) With --bulk (v23's staged dQ), these
# fail too: the row id of the next tile row for a thread's piece; the two floats of a pair
# swapped in the staged row.
import numpy as np, sys

def swz(a): return a ^ (((a >> 7) & 7) << 4)

def make_sel(cu, Hq, S, K, rng):
    """sel[t, h] = sorted list of selected blocks (past ones random, current last)."""
    N = cu[-1]; sel = {}
    for b in range(len(cu) - 1):
        for t in range(cu[b], cu[b + 1]):
            cur = (t - cu[b]) // S
            for h in range(Hq):
                past = list(rng.permutation(cur)[:K - 1]) if cur > 0 else []
                sel[t, h] = sorted(int(x) for x in past) + [cur]
    return sel

def ref(q, k, v, do, cu, Hq, Hkv, S, sel, scale):
    N, _, D = q.shape; grp = Hq // Hkv
    o = np.zeros_like(q); lse = np.zeros((N, Hq)); dq = np.zeros_like(q); dk = np.zeros_like(k); dv = np.zeros_like(v)
    for b in range(len(cu) - 1):
        s0, s1 = cu[b], cu[b + 1]; L = s1 - s0
        for h in range(Hq):
            kh = h // grp
            Q = q[s0:s1, h]; Kt = k[s0:s1, kh]; V = v[s0:s1, kh]; dO = do[s0:s1, h]
            allowed = np.zeros((L, L), bool)
            for t in range(L):
                for j in sel[s0 + t, h]:
                    lo, hi = j * S, min((j + 1) * S, t + 1)
                    allowed[t, lo:hi] = True
            Sm = scale * Q @ Kt.T; Sm[~allowed] = -np.inf
            m = Sm.max(1, keepdims=True); P = np.exp(Sm - m); l = P.sum(1, keepdims=True); P /= l
            O = P @ V; o[s0:s1, h] = O; lse[s0:s1, h] = (m + np.log(l))[:, 0]
            dP = dO @ V.T; delta = (dO * O).sum(1, keepdims=True); dS = P * (dP - delta)
            dq[s0:s1, h] = scale * dS @ Kt; dk[s0:s1, kh] += scale * dS.T @ Q; dv[s0:s1, kh] += P.T @ dO
    return o, lse, dq, dk, dv

def gather_index(cu, Hq, Hkv, S, K, sel, rng):
    """bucket_offset / entries as build_gather_index (entry order inside a bucket shuffled)."""
    kp = K - 1; block_offset = [0]
    for b in range(len(cu) - 1): block_offset.append(block_offset[-1] + (cu[b + 1] - cu[b]) // S)
    buckets = [[] for _ in range(block_offset[-1] * Hkv)]
    for b in range(len(cu) - 1):
        for t in range(cu[b], cu[b + 1]):
            for h in range(Hq):
                for slot, j in enumerate(sel[t, h][:-1]):
                    buckets[(block_offset[b] + j) * Hkv + h // (Hq // Hkv)].append((t * Hq + h) * kp + slot)
    offs = [0]; ents = []
    for bk in buckets:
        bk = list(rng.permutation(bk)) if bk else []
        ents += [int(e) for e in bk]; offs.append(len(ents))
    return block_offset, offs, ents

def sim(q, k, v, do, o, lse, cu, Hq, Hkv, D, S, K, scale, block_offset, bucket_offset, entries):
    N = q.shape[0]; group = Hq // Hkv; kp = K - 1
    Bc = 128; Br = 128 if D == 64 else 64; ST = 2; CB = D // 64
    LOG2E = 1.4426950408889634; scale_log2 = scale * LOG2E
    n_pad = (N + 3) // 4 * 4
    lse_t = np.zeros((Hq, n_pad)); delta_t = np.zeros((Hq, n_pad))
    for t in range(N):
        for h in range(Hq):
            delta_t[h, t] = (o[t, h] * do[t, h]).sum(); lse_t[h, t] = lse[t, h] * LOG2E
    dq_acc = np.zeros((N, Hq, D)); dk_out = np.full((N, Hkv, D), np.nan); dv_out = np.full((N, Hkv, D), np.nan)
    kKV = Bc * D * 2; kQ = Br * D * 2; kRowBox = Br + 4; kRow = (kRowBox * 4 + 127) // 128 * 128
    oK = 0; oV = kKV; oQ = 2 * kKV; oDo = oQ + ST * kQ; oLse = oDo + ST * kQ; oDl = oLse + ST * kRow
    total = oDl + ST * kRow
    qflat = q.reshape(-1); doflat = do.reshape(-1)
    max_len = max(cu[i + 1] - cu[i] for i in range(len(cu) - 1))
    for b in range(len(cu) - 1):
      for kvh in range(Hkv):
        for n in range((max_len + Bc - 1) // Bc):
            seq_start, seq_end = cu[b], cu[b + 1]; length = seq_end - seq_start
            if n * Bc >= length: continue
            mem = np.full(total, np.nan)  # element values at their first byte
            key0 = seq_start + n * Bc
            blk = n * Bc // S
            q_hi = seq_start + min(length, (blk + 1) * S)
            tiles = (q_hi - key0 + Br - 1) // Br; n1 = tiles * group
            e_lo = e_hi = 0
            if kp > 0 and (blk + 1) * S <= length:
                bucket = (block_offset[b] + blk) * Hkv + kvh
                e_lo, e_hi = bucket_offset[bucket], bucket_offset[bucket + 1]
            n_iter = n1 + (e_hi - e_lo + Br - 1) // Br
            def tma3(dst, T, c0, head, c2, rows):
                for r in range(rows):
                    for c in range(64):
                        tok = c2 + r
                        mem[dst + swz(r * 128 + c * 2)] = T[tok, head, c0 + c] if tok < N else 0.0
            def tma2(dst, A, c0, head, rows):
                assert (c0 * 4) % 16 == 0, "TMA box start not 16-byte aligned"
                for r in range(rows):
                    mem[dst + r * 4] = A[head, c0 + r] if c0 + r < N else 0.0
            for cb in range(CB):
                tma3(oK + cb * Bc * 128, k, cb * 64, kvh, key0, Bc)
                tma3(oV + cb * Bc * 128, v, cb * 64, kvh, key0, Bc)
            def rd_k(start, M):  # K-major operand (M rows x 16), as wgmma reads it
                return np.array([[mem[swz(start + (m // 8) * 1024 + (m % 8) * 128 + kk * 2)] for kk in range(16)] for m in range(M)])
            def rdB_mn(start, lbo, Nn):  # MN-major B, 16 x N
                return np.array([[mem[swz(start + (nn // 64) * lbo + (kk // 8) * 1024 + (kk % 8) * 128 + (nn % 64) * 2)] for nn in range(Nn)] for kk in range(16)])
            dv = [np.zeros((64, D)) for _ in range(2)]; dk = [np.zeros((64, D)) for _ in range(2)]
            Kfull = np.array([[k[key0 + r, kvh, d] if key0 + r < N else 0.0 for d in range(D)] for r in range(Bc)])
            ent = [entries[e_lo + pt] if (pt < Br and e_lo + pt < e_hi) else 0 for pt in range(128)]
            sRow = np.zeros((ST, Br), int)
            for it in range(n_iter):
                s = it % ST
                # ---- producer ----
                if it < n1:
                    h = kvh * group + it // tiles; q0 = key0 + (it % tiles) * Br
                    for cb in range(CB):
                        tma3(oQ + s * kQ + cb * Br * 128, q, cb * 64, h, q0, Br)
                        tma3(oDo + s * kQ + cb * Br * 128, do, cb * 64, h, q0, Br)
                    tma2(oLse + s * kRow, lse_t, q0 & ~3, h, kRowBox); tma2(oDl + s * kRow, delta_t, q0 & ~3, h, kRowBox)
                else:
                    gbase = e_lo + (it - n1) * Br; cnt = min(Br, e_hi - gbase)
                    for pt in range(Br):
                        valid = pt < cnt
                        row = ent[pt] // kp if valid else 0
                        sRow[s, pt] = row
                        tok = row // Hq; hq = row - tok * Hq
                        mem[oLse + s * kRow + 4 * pt] = lse_t[hq, tok] if valid else 0.0
                        mem[oDl + s * kRow + 4 * pt] = delta_t[hq, tok] if valid else 0.0
                        if gbase + Br + pt < e_hi: ent[pt] = entries[gbase + Br + pt]
                    for pt in range(128):
                        for j in range(Br * CB * 8 // 128):
                            idx = j * 128 + pt; c = idx & 7; u = idx >> 3
                            r = u // CB; cb = u % CB
                            src = sRow[s, r] * D + cb * 64 + c * 8
                            dst = s * Br * D + cb * Br * 64 + r * 64 + ((c ^ (r & 7)) << 3)  # elements
                            for e in range(8):  # 16 bytes = 8 bf16
                                mem[oQ + 2 * (dst + e)] = qflat[src + e] if r < cnt else 0.0
                                mem[oDo + 2 * (dst + e)] = doflat[src + e] if r < cnt else 0.0
                # ---- consumers ----
                causal = it < n1
                h = kvh * group + it // tiles; q0 = key0 + (it % tiles) * Br
                cnt = Br if causal else min(Br, e_hi - (e_lo + (it - n1) * Br))
                qs = oQ + s * kQ; dos = oDo + s * kQ
                row_off = (q0 & 3) if causal else 0
                col_lim = q_hi - q0 if causal else cnt
                # operand tiles as wgmma reads them (S^T uses Q K-major; dV/dK use dO, Q MN-major)
                Qt = np.vstack([np.hstack([rd_k(qs + (kk // 4) * (Br * 128) + (kk % 4) * 32, Br) for kk in range(D // 16)])])
                dOt = np.hstack([rd_k(dos + (kk // 4) * (Br * 128) + (kk % 4) * 32, Br) for kk in range(D // 16)])
                Qmn = np.vstack([rdB_mn(qs + kk * 2048, Br * 128, D) for kk in range(Br // 16)])
                dOmn = np.vstack([rdB_mn(dos + kk * 2048, Br * 128, D) for kk in range(Br // 16)])
                assert np.array_equal(Qt, Qmn) and np.array_equal(dOt, dOmn), "K-major / MN-major views differ"
                lse_s = np.array([mem[oLse + s * kRow + 4 * (row_off + c)] for c in range(Br)])
                dl_s = np.array([mem[oDl + s * kRow + 4 * (row_off + c)] for c in range(Br)])
                DS = np.zeros((Bc, Br))
                for w in range(2):
                    kw0 = key0 + 64 * w
                    Kw = np.hstack([rd_k(oK + (kk // 4) * (Bc * 128) + w * 64 * 128 + (kk % 4) * 32, 64) for kk in range(D // 16)])
                    Vw = np.hstack([rd_k(oV + (kk // 4) * (Bc * 128) + w * 64 * 128 + (kk % 4) * 32, 64) for kk in range(D // 16)])
                    St = Kw @ Qt.T; dPt = Vw @ dOt.T
                    need_mask = ((kw0 + 63 > q0) or (q0 + Br > q_hi)) if causal else cnt < Br
                    P = 2.0 ** (St * scale_log2 - lse_s[None, :])
                    if need_mask:
                        for m in range(64):
                            kq = (kw0 + m - q0) if causal else -(1 << 20)
                            for col in range(Br):
                                if kq > col or col >= col_lim: P[m, col] = 0.0
                    dSt = P * (dPt - dl_s[None, :])
                    dv[w] += P @ dOmn; dk[w] += dSt @ Qmn
                    DS[64 * w:64 * w + 64] = dSt
                DQ = DS.T @ Kfull  # (Br, D): the two warpgroups' dQ pieces together
                if causal:
                    for w in range(2):
                        split_cols = D == 128
                        col0 = 64 * w if split_cols else 0; rofs = 0 if split_cols else 64 * w
                        if q0 + rofs >= q_hi: continue
                        for r in range(64):
                            tok = q0 + rofs + r
                            if tok >= N: continue
                            dq_acc[tok, h, col0:col0 + 64] += DQ[rofs + r, col0:col0 + 64]
                elif BULK:
                    # v23 (MOBA_MOBA_BWD_DQ=bulk): each thread (wi, g, qd) of warpgroup w
                    # stores its accumulator pairs dq[4i + 2hh + e] (tile row rofs + 16wi +
                    # g + 8hh, column col0 + 8i + 2qd + e) unswizzled: box i // 4, row r,
                    # float 8 (i % 4) + 2qd + e of the row's 128 bytes; then thread t sends
                    # row t % 64 of box t // 64 (32 floats) to its row id, padding rows skipped.
                    for w in range(2):
                        split_cols = D == 128
                        col0 = 64 * w if split_cols else 0; rofs = 0 if split_cols else 64 * w
                        buf = np.full((2, 64, 32), np.nan)
                        for wi in range(4):
                            for g in range(8):
                                for qd in range(4):
                                    for i in range(8):
                                        for hh in range(2):
                                            r = 16 * wi + g + 8 * hh
                                            for e in range(2):
                                                buf[i // 4, r, 8 * (i % 4) + 2 * qd + e] = DQ[rofs + r, col0 + 8 * i + 2 * qd + e]
                        for t in range(128):
                            r, box = t & 63, t >> 6
                            if rofs + r >= cnt: continue
                            rid = sRow[s, rofs + (t & 63)]
                            dq_acc[rid // Hq, rid % Hq, col0 + 32 * box:col0 + 32 * box + 32] += buf[box, r]
                else:
                    for w in range(2):
                        split_cols = D == 128
                        col0 = 64 * w if split_cols else 0; rofs = 0 if split_cols else 64 * w
                        for r in range(64):
                            if rofs + r >= cnt: continue
                            rid = sRow[s, rofs + r]
                            dq_acc[rid // Hq, rid % Hq, col0:col0 + 64] += DQ[rofs + r, col0:col0 + 64]
            for w in range(2):
                for m in range(64):
                    key = key0 + 64 * w + m
                    if key >= seq_end: continue
                    dk_out[key, kvh] = dk[w][m] * scale; dv_out[key, kvh] = dv[w][m]
    return dq_acc * scale, dk_out, dv_out

def run(cu, Hq, Hkv, D, S, K, seed=0):
    rng = np.random.default_rng(seed); N = cu[-1]
    q = rng.standard_normal((N, Hq, D)); k = rng.standard_normal((N, Hkv, D)); v = rng.standard_normal((N, Hkv, D)); do = rng.standard_normal((N, Hq, D))
    scale = 1 / np.sqrt(D)
    sel = make_sel(cu, Hq, S, K, rng)
    o, lse, dq, dk, dv = ref(q, k, v, do, cu, Hq, Hkv, S, sel, scale)
    bo, offs, ents = gather_index(cu, Hq, Hkv, S, K, sel, rng)
    sdq, sdk, sdv = sim(q, k, v, do, o, lse, cu, Hq, Hkv, D, S, K, scale, bo, offs, ents)
    errs = [np.nanmax(np.abs(a - b)) / max(np.abs(b).max(), 1.0) for a, b in ((sdq, dq), (sdk, dk), (sdv, dv))]
    nans = [int(np.isnan(a).sum()) for a in (sdq, sdk, sdv)]
    print(f"cu={cu} Hq={Hq} Hkv={Hkv} D={D} S={S} K={K} entries={len(ents)}: rel err dq {errs[0]:.2e} "
          f"dk {errs[1]:.2e} dv {errs[2]:.2e} nan {nans}", flush=True)
    return max(errs) < 1e-9 and sum(nans) == 0

cases = [([0, 300], 2, 1, 128, 128, 3), ([0, 450], 2, 2, 64, 128, 2), ([0, 1, 78, 390, 700], 2, 1, 128, 128, 3),
         ([0, 127, 128, 385], 1, 1, 64, 128, 16), ([0, 600], 1, 1, 64, 256, 3), ([0, 200], 2, 1, 128, 128, 1)]
# --bulk: the gathered tiles' dQ as v23 sends it (staged, then by rows and boxes).
BULK = "--bulk" in sys.argv
args = [a for a in sys.argv[1:] if a != "--bulk"]
if args: cases = cases[:int(args[0])]
print("gathered dQ:", "bulk (v23)" if BULK else "red.v2")
ok = all([run(*c) for c in cases])
print("ALL OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
