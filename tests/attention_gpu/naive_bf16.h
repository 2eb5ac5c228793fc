// The naive bf16 attention that sets the error bound of every bf16 kernel: the same maths
// as the reference, with bf16 where a straightforward bf16 implementation has it (inputs,
// P before P.V, dS before dS.K and dS^T.Q, outputs) and float everywhere else. A kernel
// passes if its error against the fp64 reference is at most twice this one's.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention/gate.h"
#include "attention/layout.h"

namespace moba::test {

// Round a float to the nearest bf16 (ties to even) and back.
inline float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}
inline uint16_t bf16_bits(float x) {
  const float r = round_bf16(x);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

struct KeyRange {
  int64_t begin, end;
};

// Keys of (token, head): dense causal when sel is null, else MoBA's selected blocks.
inline void keys_of(const attn::Layout& l, int64_t S, const attn::Selection* sel, int64_t tok,
                    int64_t h, std::vector<KeyRange>& out) {
  out.clear();
  int64_t b = 0;
  while (l.cu_seqlens[b + 1] <= tok) ++b;
  const int64_t start = l.cu_seqlens[b];
  if (!sel) {
    out.push_back({start, tok + 1});
    return;
  }
  for (int32_t j : sel->at(tok, h))
    if (j >= 0) out.push_back({start + j * S, std::min(start + (j + 1) * S, tok + 1)});
}

struct NaiveResult {
  std::vector<float> out, lse, dq, dk, dv;
};

inline NaiveResult naive_bf16(const attn::Layout& l, int64_t S, const attn::Selection* sel,
                              double scale_d, const std::vector<float>& q,
                              const std::vector<float>& k, const std::vector<float>& v,
                              const std::vector<float>& dout) {
  const int64_t N = l.tokens(), Hq = l.num_q_heads, Hkv = l.num_kv_heads, D = l.head_dim;
  const int64_t G = Hq / Hkv;
  const float scale = static_cast<float>(scale_d);
  NaiveResult r{std::vector<float>(q.size()), std::vector<float>(N * Hq),
                std::vector<float>(q.size()), std::vector<float>(k.size()),
                std::vector<float>(v.size())};
  auto dot = [&](const float* a, const float* b) {
    float acc = 0.f;
    for (int64_t d = 0; d < D; ++d) acc += a[d] * b[d];
    return acc;
  };
#pragma omp parallel
  {
    std::vector<KeyRange> ranges;
    std::vector<float> s, acc(D);
#pragma omp for schedule(dynamic, 8)
    for (int64_t tok = 0; tok < N; ++tok)
      for (int64_t h = 0; h < Hq; ++h) {
        keys_of(l, S, sel, tok, h, ranges);
        const int64_t kvh = h / G;
        const float* qr = &q[(tok * Hq + h) * D];
        s.clear();
        float m = -INFINITY;
        for (const KeyRange& kr : ranges)
          for (int64_t j = kr.begin; j < kr.end; ++j) {
            s.push_back(scale * dot(qr, &k[(j * Hkv + kvh) * D]));
            m = std::max(m, s.back());
          }
        std::fill(acc.begin(), acc.end(), 0.f);
        float sum = 0.f;
        size_t i = 0;
        for (const KeyRange& kr : ranges)
          for (int64_t j = kr.begin; j < kr.end; ++j, ++i) {
            const float p = std::exp(s[i] - m);
            sum += p;
            const float pb = round_bf16(p);
            for (int64_t d = 0; d < D; ++d) acc[d] += pb * v[(j * Hkv + kvh) * D + d];
          }
        for (int64_t d = 0; d < D; ++d) r.out[(tok * Hq + h) * D + d] = round_bf16(acc[d] / sum);
        r.lse[tok * Hq + h] = m + std::log(sum);
      }
  }
  if (dout.empty()) return r;
  std::vector<float> dk(k.size(), 0.f), dv(v.size(), 0.f);
#pragma omp parallel
  {
    std::vector<KeyRange> ranges;
#pragma omp for schedule(static)
    for (int64_t kvh = 0; kvh < Hkv; ++kvh)
      for (int64_t tok = 0; tok < N; ++tok)
        for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
          keys_of(l, S, sel, tok, h, ranges);
          const int64_t row = (tok * Hq + h) * D;
          const float* qr = &q[row];
          const float* dor = &dout[row];
          const float delta = dot(dor, &r.out[row]);
          std::vector<float> dq(D, 0.f);
          for (const KeyRange& kr : ranges)
            for (int64_t j = kr.begin; j < kr.end; ++j) {
              const int64_t krow = (j * Hkv + kvh) * D;
              const float p = std::exp(scale * dot(qr, &k[krow]) - r.lse[tok * Hq + h]);
              const float ds = round_bf16(p * (dot(dor, &v[krow]) - delta));
              const float pb = round_bf16(p);
              for (int64_t d = 0; d < D; ++d) {
                dv[krow + d] += pb * dor[d];
                dk[krow + d] += ds * qr[d];
                dq[d] += ds * k[krow + d];
              }
            }
          for (int64_t d = 0; d < D; ++d) r.dq[row + d] = round_bf16(scale * dq[d]);
        }
  }
  for (size_t i = 0; i < dk.size(); ++i) {
    r.dk[i] = round_bf16(scale * dk[i]);
    r.dv[i] = round_bf16(dv[i]);
  }
  return r;
}

}  // namespace moba::test
