#!/usr/bin/env python3
# CPU model of attn_bwd_wgmma_kernel's bookkeeping (src/attention/cuda/bwd_wgmma.cuh), in
# fp64 without rounding, against an fp64 reference backward. Not part of CI (needs numpy):
# run it by hand after changing the kernel's tiling, masks, register->shared-memory
# addresses, descriptor offsets or the dQ split:  python3 tests/attention_gpu/wgmma_bwd_sim.py
# What it models as the hardware does (per the PTX ISA, as documented in wgmma.cuh, the
# model the wgmma forward was validated with on the H100): the TMA 128-byte swizzle
# (16-byte chunk c of row r at c ^ (r % 8) inside 1024-byte atoms), the address a matrix
# descriptor gives each operand element (K-major and MN-major, LBO / SBO), the wgmma
# accumulator and RS A-fragment layouts; an MN-major A operand (dQ's A = dS, imm-trans-a)
# is modelled exactly like an MN-major B (confirmed on the H100, results/attention/v10), and
# the 16-byte alignment that 2-d TMA boxes need at their innermost start (asserted).
# What it transcribes from the kernel: tile loops
# and their bounds, the masks, lse / delta indexing, the register packing, the dS^T and dQ
# staging addresses, the descriptors' start addresses, the dQ split and the reduce-add
# coordinates. It does NOT check synchronisation (mbarrier parities, tx counts, named
# barriers, proxy fences) or the hardware semantics themselves.
import numpy as np, sys

def swz(a): return a ^ (((a >> 7) & 7) << 4)

def ref(q, k, v, do, cu, Hq, Hkv, scale):
    N, _, D = q.shape; grp = Hq // Hkv
    o = np.zeros_like(q); lse = np.zeros((N, Hq)); dq = np.zeros_like(q); dk = np.zeros_like(k); dv = np.zeros_like(v)
    for b in range(len(cu) - 1):
        s0, s1 = cu[b], cu[b + 1]
        for h in range(Hq):
            kh = h // grp
            Q = q[s0:s1, h]; K = k[s0:s1, kh]; V = v[s0:s1, kh]; dO = do[s0:s1, h]
            S = scale * Q @ K.T; L = s1 - s0
            S[np.triu_indices(L, 1)] = -np.inf
            m = S.max(1, keepdims=True); P = np.exp(S - m); l = P.sum(1, keepdims=True); P /= l
            O = P @ V; o[s0:s1, h] = O; lse[s0:s1, h] = (m + np.log(l))[:, 0]
            dP = dO @ V.T; delta = (dO * O).sum(1, keepdims=True); dS = P * (dP - delta)
            dq[s0:s1, h] = scale * dS @ K; dk[s0:s1, kh] += scale * dS.T @ Q; dv[s0:s1, kh] += P.T @ dO
    return o, lse, dq, dk, dv

def sim(q, k, v, do, o, lse, cu, Hq, Hkv, D, scale):
    N = q.shape[0]; group = Hq // Hkv
    Bc = 128; Br = 128 if D == 64 else 64; ST = 2; CB = D // 64
    LOG2E = 1.4426950408889634; scale_log2 = scale * LOG2E
    n_pad = (N + 3) // 4 * 4
    lse_t = np.zeros((Hq, n_pad)); delta_t = np.zeros((Hq, n_pad))
    for t in range(N):
        for h in range(Hq):
            delta_t[h, t] = (o[t, h] * do[t, h]).sum(); lse_t[h, t] = lse[t, h] * LOG2E
    dq_acc = np.zeros((N, Hq, D)); dk_out = np.full((N, Hkv, D), np.nan); dv_out = np.full((N, Hkv, D), np.nan)
    # smem offsets (WgBwdTraits)
    kKV = Bc * D * 2; kQ = Br * D * 2; kRowBox = Br + 4; kRow = (kRowBox * 4 + 127) // 128 * 128; kDs = Bc * Br * 2; kDqBox = 64 * 128; kDqWg = 2 * kDqBox
    oK = 0; oV = oK + kKV; oQ = oV + kKV; oDo = oQ + ST * kQ; oDs = oDo + ST * kQ; oDq = oDs + 2 * kDs
    oLse = oDq + 2 * kDqWg; oDl = oLse + ST * kRow; total = oDl + ST * kRow
    max_len = max(cu[i + 1] - cu[i] for i in range(len(cu) - 1))
    tiles_n = (max_len + Bc - 1) // Bc
    for b in range(len(cu) - 1):
      for kvh in range(Hkv):
        for n in range(tiles_n):
            seq_start, seq_end = cu[b], cu[b + 1]
            if n * Bc >= seq_end - seq_start: continue
            mem = np.full(total, np.nan)   # element values stored at their first byte
            key0 = seq_start + n * Bc
            tiles = (seq_end - key0 + Br - 1) // Br; n_iter = tiles * group
            def tma3(dst, T, c0, head, c2, rows):
                for r in range(rows):
                    for c in range(64):
                        tok = c2 + r
                        mem[dst + swz(r * 128 + c * 2)] = T[tok, head, c0 + c] if tok < N else 0.0
            def tma2(dst, A, c0, head, rows):
                # The hardware faults (illegal instruction) unless the innermost start is
                # 16-byte aligned: the kernel starts these boxes at q0 & ~3.
                assert (c0 * 4) % 16 == 0, f"unaligned 2-d TMA start {c0}"
                for r in range(rows):
                    mem[dst + r * 4] = A[head, c0 + r] if c0 + r < N else 0.0
            for cb in range(CB):
                tma3(oK + cb * Bc * 128, k, cb * 64, kvh, key0, Bc)
                tma3(oV + cb * Bc * 128, v, cb * 64, kvh, key0, Bc)
            # descriptor readers: logical operand matrices
            def rdA_k(start, M=64):  # K-major A, 64 x 16
                return np.array([[mem[swz(start + (m // 8) * 1024 + (m % 8) * 128 + kk * 2)] for kk in range(16)] for m in range(M)])
            def rdB_k(start, Nn):    # K-major B, 16 x N
                return np.array([[mem[swz(start + (nn // 8) * 1024 + (nn % 8) * 128 + kk * 2)] for nn in range(Nn)] for kk in range(16)])
            def rdA_mn(start, lbo):  # MN-major A, 64 x 16
                return np.array([[mem[swz(start + (m // 64) * lbo + (kk // 8) * 1024 + (kk % 8) * 128 + (m % 64) * 2)] for kk in range(16)] for m in range(64)])
            def rdB_mn(start, lbo, Nn):  # MN-major B, 16 x N
                return np.array([[mem[swz(start + (nn // 64) * lbo + (kk // 8) * 1024 + (kk % 8) * 128 + (nn % 64) * 2)] for nn in range(Nn)] for kk in range(16)])
            dv = [np.zeros((64, D)) for _ in range(2)]; dk = [np.zeros((64, D)) for _ in range(2)]
            pending_dsT = {}
            for it in range(n_iter):
                s = it % ST; h = kvh * group + it // tiles; q0 = key0 + (it % tiles) * Br
                for cb in range(CB):
                    tma3(oQ + s * kQ + cb * Br * 128, q, cb * 64, h, q0, Br)
                    tma3(oDo + s * kQ + cb * Br * 128, do, cb * 64, h, q0, Br)
                tma2(oLse + s * kRow, lse_t, q0 & ~3, h, kRowBox); tma2(oDl + s * kRow, delta_t, q0 & ~3, h, kRowBox)
                qs = oQ + s * kQ; dos = oDo + s * kQ
                regs_ds = {}
                for w in range(2):
                    kw0 = key0 + 64 * w
                    St = np.zeros((64, Br)); dPt = np.zeros((64, Br))
                    for kk in range(D // 16):
                        off = (kk % 4) * 32
                        St += rdA_k(oK + (kk // 4) * (Bc * 128) + w * 64 * 128 + off) @ rdB_k(qs + (kk // 4) * (Br * 128) + off, Br)
                        dPt += rdA_k(oV + (kk // 4) * (Bc * 128) + w * 64 * 128 + off) @ rdB_k(dos + (kk // 4) * (Br * 128) + off, Br)
                    need_mask = (kw0 + 63 > q0) or (q0 + Br > seq_end)
                    PA = np.zeros((64, Br)); DSA = np.zeros((64, Br))
                    for wi in range(4):
                        for lane in range(32):
                            g, qd = lane // 4, lane % 4
                            krow0 = kw0 + 16 * wi + g
                            st = np.zeros(Br // 2); dpt = np.zeros(Br // 2)
                            for i in range(Br // 8):
                                for hh in range(2):
                                    for e in range(2):
                                        st[4 * i + 2 * hh + e] = St[16 * wi + g + 8 * hh, 8 * i + 2 * qd + e]
                                        dpt[4 * i + 2 * hh + e] = dPt[16 * wi + g + 8 * hh, 8 * i + 2 * qd + e]
                            for i in range(Br // 8):
                                lx = mem[oLse + s * kRow + 4 * ((q0 & 3) + 8 * i + 2 * qd)]; ly = mem[oLse + s * kRow + 4 * ((q0 & 3) + 8 * i + 2 * qd + 1)]
                                for hh in range(2):
                                    st[4 * i + 2 * hh] = 2.0 ** (st[4 * i + 2 * hh] * scale_log2 - lx)
                                    st[4 * i + 2 * hh + 1] = 2.0 ** (st[4 * i + 2 * hh + 1] * scale_log2 - ly)
                            if need_mask:
                                for i in range(Br // 8):
                                    for c in range(4):
                                        qt = q0 + 8 * i + 2 * qd + (c & 1); kt = krow0 + 8 * (c >> 1)
                                        if kt > qt or qt >= seq_end: st[4 * i + c] = 0.0
                            for i in range(Br // 8):
                                dx = mem[oDl + s * kRow + 4 * ((q0 & 3) + 8 * i + 2 * qd)]; dy = mem[oDl + s * kRow + 4 * ((q0 & 3) + 8 * i + 2 * qd + 1)]
                                for c in range(4):
                                    dpt[4 * i + c] = st[4 * i + c] * (dpt[4 * i + c] - (dy if c & 1 else dx))
                            # pack -> A fragments (pairs), then the documented RS-A layout
                            for kk in range(Br // 16):
                                for j in range(4):
                                    pair_p = (st[8 * kk + 2 * j], st[8 * kk + 2 * j + 1])
                                    pair_d = (dpt[8 * kk + 2 * j], dpt[8 * kk + 2 * j + 1])
                                    row = 16 * wi + g + (8 if j in (1, 3) else 0)
                                    col = 16 * kk + 2 * qd + (8 if j >= 2 else 0)
                                    PA[row, col:col + 2] = pair_p; DSA[row, col:col + 2] = pair_d
                                    regs_ds[(w, wi, lane, kk, j)] = pair_d
                    # RS: dV += P^T dO, dK += dS^T Q
                    for kk in range(Br // 16):
                        dv[w] += PA[:, 16 * kk:16 * kk + 16] @ rdB_mn(dos + kk * 2048, Br * 128, D)
                        dk[w] += DSA[:, 16 * kk:16 * kk + 16] @ rdB_mn(qs + kk * 2048, Br * 128, D)
                    # dS^T stores
                    buf = oDs + (it & 1) * kDs
                    for wi in range(4):
                        for lane in range(32):
                            g, qd = lane // 4, lane % 4
                            r0 = 64 * w + 16 * wi + g
                            for kk in range(Br // 16):
                                for j in range(4):
                                    i = 2 * kk + (j >> 1); r = r0 + 8 * (j & 1)
                                    off = (i // 8) * (Bc * 128) + r * 128 + (((i & 7) ^ g) << 4) + 4 * qd
                                    a = buf + off
                                    mem[a] = regs_ds[(w, wi, lane, kk, j)][0]; mem[a + 2] = regs_ds[(w, wi, lane, kk, j)][1]
                # named barrier; dQ per warpgroup
                for w in range(2):
                    split_cols = D == 128
                    a_off = 0 if split_cols else w * Bc * 128; b_off = w * Bc * 128 if split_cols else 0
                    col0 = 64 * w if split_cols else 0; row_off = 0 if split_cols else 64 * w
                    a_base = oDs + (it & 1) * kDs + a_off; b_base = oK + b_off
                    DQ = np.zeros((64, 64))
                    for kk in range(Bc // 16):
                        DQ += rdA_mn(a_base + kk * 2048, Bc * 128) @ rdB_mn(b_base + kk * 2048, Bc * 128, 64)
                    sdq = oDq + w * kDqWg
                    for wi in range(4):
                        for lane in range(32):
                            g, qd = lane // 4, lane % 4
                            for i in range(8):
                                for hh in range(2):
                                    r = 16 * wi + g + 8 * hh
                                    chunk = 2 * (i % 4) + (qd >> 1)
                                    off = (i // 4) * kDqBox + r * 128 + ((chunk ^ g) << 4) + 8 * (qd & 1)
                                    mem[sdq + off] = DQ[r, 8 * i + 2 * qd]; mem[sdq + off + 4] = DQ[r, 8 * i + 2 * qd + 1]
                    for box in range(2):
                        src = sdq + box * kDqBox
                        for r in range(64):
                            tok = q0 + row_off + r
                            if tok >= N: continue
                            for c in range(32):
                                dq_acc[tok, h, col0 + 32 * box + c] += mem[src + swz(r * 128 + c * 4)]
            for w in range(2):
                kw0 = key0 + 64 * w
                for m in range(64):
                    key = kw0 + m
                    if key >= seq_end: continue
                    dk_out[key, kvh] = dk[w][m] * scale; dv_out[key, kvh] = dv[w][m]
    return dq_acc * scale, dk_out, dv_out

def run(cu, Hq, Hkv, D, seed=0):
    rng = np.random.default_rng(seed); N = cu[-1]
    q = rng.standard_normal((N, Hq, D)); k = rng.standard_normal((N, Hkv, D)); v = rng.standard_normal((N, Hkv, D)); do = rng.standard_normal((N, Hq, D))
    scale = 1 / np.sqrt(D)
    o, lse, dq, dk, dv = ref(q, k, v, do, cu, Hq, Hkv, scale)
    sdq, sdk, sdv = sim(q, k, v, do, o, lse, cu, Hq, Hkv, D, scale)
    errs = [np.nanmax(np.abs(a - b)) / max(np.abs(b).max(), 1.0) for a, b in ((sdq, dq), (sdk, dk), (sdv, dv))]
    nans = [int(np.isnan(a).sum()) for a in (sdq, sdk, sdv)]
    print(f"cu={cu} Hq={Hq} Hkv={Hkv} D={D}: rel err dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e} nan {nans}", flush=True)
    return max(errs) < 1e-9 and sum(nans) == 0

cases = [([0, 1], 1, 1, 64), ([0, 1], 2, 1, 128), ([0, 200], 2, 1, 64), ([0, 150], 2, 1, 128),
         ([0, 1, 78, 140], 2, 2, 64), ([0, 100, 170, 181], 2, 1, 128), ([0, 129, 130, 300], 1, 1, 64)]
ok = all([run(*c) for c in cases])
print("ALL OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
