// The fp64 reference of single attention rows and of single keys' gradients, for tests
// whose tensors are too large for a whole reference (long_context_gpu_test.cpp): inputs
// are bf16 bits on the host; every row also gets the naive bf16 value of naive_bf16.h (the
// error bound). Checked against the whole-tensor CPU reference in
// tests/attention/sampled_reference_test.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attention_gpu/naive_bf16.h"

namespace moba::test {

using Bits = std::vector<uint16_t>;  // bf16 tensors on the host, as their bits

inline std::vector<float> to_float(const uint16_t* b, size_t n) {
  std::vector<float> y(n);
  for (size_t i = 0; i < n; ++i) y[i] = bf16_value(b[i]);
  return y;
}

// Sampled tokens: `spread` evenly spaced over [0, N), a few block edges, the last four.
inline std::vector<int64_t> sample_tokens(int64_t N, int64_t S, int64_t spread) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < spread; ++i) t.push_back(i * (N - 1) / (spread - 1));
  for (int64_t x : {int64_t{1}, S - 1, S, 3 * S + 7, N / 2 + 1, N - S - 1, N - S})
    if (x >= 0 && x < N) t.push_back(x);
  for (int64_t x = N - 4; x < N; ++x) t.push_back(x);
  std::sort(t.begin(), t.end());
  t.erase(std::unique(t.begin(), t.end()), t.end());
  return t;
}

// Host K and V of one sequence, (N, Hkv, D) bf16 bits.
struct HostKV {
  Bits k, v;
  int64_t Hkv = 0, D = 0;
  const uint16_t* krow(int64_t tok, int64_t kvh) const { return &k[(tok * Hkv + kvh) * D]; }
  const uint16_t* vrow(int64_t tok, int64_t kvh) const { return &v[(tok * Hkv + kvh) * D]; }
};

// Keys of a query (one sequence from token 0): MoBA's selected blocks (slots of the
// selection, -1 = none), or every earlier key when `slots` is null (dense causal).
inline std::vector<KeyRange> key_ranges(const int32_t* slots, int64_t K, int64_t S, int64_t tok) {
  std::vector<KeyRange> r;
  if (!slots) {
    r.push_back({0, tok + 1});
    return r;
  }
  for (int64_t i = 0; i < K; ++i)
    if (slots[i] >= 0) r.push_back({slots[i] * S, std::min((slots[i] + 1) * S, tok + 1)});
  return r;
}

// One (token, head) row over its keys: the fp64 reference and the naive bf16 values (the
// maths of naive_bf16.h, row by row): out, lse, and with dout also delta and dq.
struct RowResult {
  std::vector<double> out, dq;
  double lse = 0.0, delta = 0.0;
  std::vector<float> n_out, n_dq;
  float n_lse = 0.f, n_delta = 0.f;
};

inline RowResult row_reference(const HostKV& kv, int64_t kvh, const std::vector<KeyRange>& keys,
                        const float* q, const float* dout, double scale) {
  const int64_t D = kv.D;
  const float scale_f = static_cast<float>(scale);
  RowResult r;
  r.out.assign(D, 0.0);
  r.n_out.assign(D, 0.f);
  std::vector<float> kf(D), vf(D);
  auto load = [&](int64_t j) {
    const uint16_t* kb = kv.krow(j, kvh);
    const uint16_t* vb = kv.vrow(j, kvh);
    for (int64_t d = 0; d < D; ++d) {
      kf[d] = bf16_value(kb[d]);
      vf[d] = bf16_value(vb[d]);
    }
  };
  auto dot_d = [&](const float* a, const float* b) {
    double s = 0.0;
    for (int64_t d = 0; d < D; ++d) s += static_cast<double>(a[d]) * b[d];
    return s;
  };
  auto dot_f = [&](const float* a, const float* b) {
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
    return s;
  };
  // Pass 1: the maxima of the scores.
  double m = -INFINITY;
  float m_f = -INFINITY;
  for (const KeyRange& kr : keys)
    for (int64_t j = kr.begin; j < kr.end; ++j) {
      load(j);
      m = std::max(m, scale * dot_d(q, kf.data()));
      m_f = std::max(m_f, scale_f * dot_f(q, kf.data()));
    }
  // Pass 2: sums and outputs.
  double l = 0.0;
  float l_f = 0.f;
  std::vector<float> acc_f(D, 0.f);
  for (const KeyRange& kr : keys)
    for (int64_t j = kr.begin; j < kr.end; ++j) {
      load(j);
      const double p = std::exp(scale * dot_d(q, kf.data()) - m);
      l += p;
      for (int64_t d = 0; d < D; ++d) r.out[d] += p * vf[d];
      const float pf = std::exp(scale_f * dot_f(q, kf.data()) - m_f);
      l_f += pf;
      const float pb = round_bf16(pf);
      for (int64_t d = 0; d < D; ++d) acc_f[d] += pb * vf[d];
    }
  for (int64_t d = 0; d < D; ++d) {
    r.out[d] /= l;
    r.n_out[d] = round_bf16(acc_f[d] / l_f);
  }
  r.lse = m + std::log(l);
  r.n_lse = m_f + std::log(l_f);
  if (!dout) return r;
  // Pass 3: dq = scale * sum_j P_j (dout . v_j - delta) k_j.
  std::vector<double> od(r.out.begin(), r.out.end());
  r.delta = 0.0;
  for (int64_t d = 0; d < D; ++d) r.delta += static_cast<double>(dout[d]) * od[d];
  r.n_delta = dot_f(dout, r.n_out.data());
  r.dq.assign(D, 0.0);
  std::vector<float> dq_f(D, 0.f);
  for (const KeyRange& kr : keys)
    for (int64_t j = kr.begin; j < kr.end; ++j) {
      load(j);
      const double p = std::exp(scale * dot_d(q, kf.data()) - r.lse);
      const double ds = p * (dot_d(dout, vf.data()) - r.delta);
      for (int64_t d = 0; d < D; ++d) r.dq[d] += ds * kf[d];
      const float pf = std::exp(scale_f * dot_f(q, kf.data()) - r.n_lse);
      const float dsf = round_bf16(pf * (dot_f(dout, vf.data()) - r.n_delta));
      for (int64_t d = 0; d < D; ++d) dq_f[d] += dsf * kf[d];
    }
  r.n_dq.assign(D, 0.f);
  for (int64_t d = 0; d < D; ++d) {
    r.dq[d] *= scale;
    r.n_dq[d] = round_bf16(scale_f * dq_f[d]);
  }
  return r;
}

// dK and dV of the keys [k0, k1) of kv head kvh: accumulators of the fp64 reference and of
// the naive bf16 version (fp32 sums of bf16 products, rounded at the end).
struct KeyGrads {
  int64_t k0 = 0, k1 = 0, kvh = 0, D = 0;
  std::vector<double> dk, dv;
  std::vector<float> n_dk, n_dv;
  void init(int64_t a, int64_t b, int64_t h, int64_t d) {
    k0 = a;
    k1 = b;
    kvh = h;
    D = d;
    dk.assign((b - a) * d, 0.0);
    dv.assign((b - a) * d, 0.0);
    n_dk.assign((b - a) * d, 0.f);
    n_dv.assign((b - a) * d, 0.f);
  }
  // After the last query: dK carries the softmax scale; the naive values are rounded to
  // bf16 (as naive_bf16's dk, dv).
  void finish(double scale) {
    for (size_t i = 0; i < dk.size(); ++i) {
      dk[i] *= scale;
      n_dk[i] = round_bf16(static_cast<float>(scale) * n_dk[i]);
      n_dv[i] = round_bf16(n_dv[i]);
    }
  }
  void add(const KeyGrads& o) {
    for (size_t i = 0; i < dk.size(); ++i) {
      dk[i] += o.dk[i];
      dv[i] += o.dv[i];
      n_dk[i] += o.n_dk[i];
      n_dv[i] += o.n_dv[i];
    }
  }
};

// Adds one query row's contribution to the target keys it attends to: P_j = exp(s_j -
// lse), dS_j = P_j (dout . v_j - delta); dk_j += dS_j q (scaled by finish), dv_j += P_j dout.
inline void add_key_grads(const HostKV& kv, const std::vector<KeyRange>& keys, const float* q,
                   const float* dout, double scale, const RowResult& row, KeyGrads& g) {
  const int64_t D = kv.D;
  const float scale_f = static_cast<float>(scale);
  std::vector<float> kf(D), vf(D);
  for (const KeyRange& kr : keys)
    for (int64_t j = std::max(kr.begin, g.k0); j < std::min(kr.end, g.k1); ++j) {
      const uint16_t* kb = kv.krow(j, g.kvh);
      const uint16_t* vb = kv.vrow(j, g.kvh);
      double s = 0.0, dp = 0.0;
      float s_f = 0.f, dp_f = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        kf[d] = bf16_value(kb[d]);
        vf[d] = bf16_value(vb[d]);
        s += static_cast<double>(q[d]) * kf[d];
        dp += static_cast<double>(dout[d]) * vf[d];
        s_f += q[d] * kf[d];
        dp_f += dout[d] * vf[d];
      }
      const double p = std::exp(scale * s - row.lse);
      const double ds = p * (dp - row.delta);
      const float pf = std::exp(scale_f * s_f - row.n_lse);
      const float dsf = round_bf16(pf * (dp_f - row.n_delta));
      const float pb = round_bf16(pf);
      const int64_t at = (j - g.k0) * D;
      for (int64_t d = 0; d < D; ++d) {
        g.dk[at + d] += ds * q[d];
        g.dv[at + d] += p * dout[d];
        g.n_dk[at + d] += dsf * q[d];
        g.n_dv[at + d] += pb * dout[d];
      }
    }
}

// max |a - ref| / max(1, max |ref|) (brute_force.h's max_rel_err), over gathered samples.
struct ErrAcc {
  double err = 0.0, ref = 1.0, n_err = 0.0;
  size_t count = 0;
  bool finite = true;
  void add(double gpu, double naive, double r) {
    finite = finite && std::isfinite(gpu);
    err = std::max(err, std::abs(gpu - r));
    n_err = std::max(n_err, std::abs(naive - r));
    ref = std::max(ref, std::abs(r));
    ++count;
  }
};

// CPU block means of every full block, (blocks, Hkv, D) as attn::block_means makes them
// (sums in double, exact for bf16, rounded to float).
inline std::vector<float> host_block_means(const HostKV& kv, int64_t N, int64_t S) {
  const int64_t blocks = N / S, Hkv = kv.Hkv, D = kv.D;
  std::vector<float> means(static_cast<size_t>(blocks * Hkv * D));
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < blocks; ++j)
    for (int64_t h = 0; h < Hkv; ++h) {
      std::vector<double> acc(D, 0.0);
      for (int64_t s = 0; s < S; ++s) {
        const uint16_t* kr = kv.krow(j * S + s, h);
        for (int64_t d = 0; d < D; ++d) acc[d] += bf16_value(kr[d]);
      }
      for (int64_t d = 0; d < D; ++d)
        means[(j * Hkv + h) * D + d] = static_cast<float>(acc[d] / static_cast<double>(S));
    }
  return means;
}

}  // namespace moba::test
