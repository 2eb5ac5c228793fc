// Shared by the context-parallel tests (context_parallel_test.cpp, the forward;
// context_parallel_backward_test.cpp): one sequence of whole MoBA blocks and its random
// inputs.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "attention/layout.h"

namespace moba::dist::cptest {

// One sequence of `blocks` blocks of S tokens.
struct Problem {
  int64_t blocks, S, Hq, Hkv, D, K;
  int64_t tokens() const { return blocks * S; }
  attn::Layout whole() const { return attn::Layout::batched(1, tokens(), Hq, Hkv, D); }
  attn::MobaConfig cfg() const { return {S, K}; }
  std::string name() const {
    return std::to_string(blocks) + " blocks of S = " + std::to_string(S) + ", Hq " +
           std::to_string(Hq) + ", Hkv " + std::to_string(Hkv) + ", D " + std::to_string(D) +
           ", K " + std::to_string(K);
  }
};

// q, k, v and (with_dout) the loss's weights dout, uniform in [-1, 1], drawn in that order
// from one stream: the same seed gives the same q, k, v with or without dout.
template <typename Real>
struct Inputs {
  std::vector<Real> q, k, v, dout;
};

template <typename Real>
Inputs<Real> random_inputs(const attn::Layout& l, uint64_t seed, bool with_dout = false) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  auto fill = [&](size_t n) {
    std::vector<Real> x(n);
    for (Real& e : x) e = static_cast<Real>(u(rng));
    return x;
  };
  Inputs<Real> in;
  in.q = fill(l.q_elems());
  in.k = fill(l.kv_elems());
  in.v = fill(l.kv_elems());
  if (with_dout) in.dout = fill(l.q_elems());
  return in;
}

}  // namespace moba::dist::cptest
