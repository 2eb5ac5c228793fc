// Shared by the context-parallel tests (context_parallel_test.cpp, the forward;
// context_parallel_backward_test.cpp; ring_attention_test.cpp): one sequence of whole MoBA
// blocks and its random inputs, a group whose ranks fail, and the central-difference check.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "attention/layout.h"
#include "core/error.h"
#include "dist/fake_communicator.h"

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

// -1 when equal bit for bit (equal values of equal sign; no NaN here), else the first index.
template <typename Real>
int64_t first_difference(std::span<const Real> a, std::span<const Real> b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i]) || std::signbit(a[i]) != std::signbit(b[i]))
      return static_cast<int64_t>(i);
  return -1;
}

// Runs fn on every rank of a FakeGroup and returns each rank's error message ("" when it
// returned) and run()'s.
struct Failure {
  std::vector<std::string> ranks;
  std::string group;
};
inline Failure run_failing(int R, const std::function<void(Communicator&)>& fn,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(60000)) {
  Failure f{std::vector<std::string>(static_cast<size_t>(R)), {}};
  std::mutex mu;
  FakeGroup group(R, timeout);
  try {
    group.run([&](Communicator& c) {
      try {
        fn(c);
      } catch (const Error& e) {
        std::lock_guard lk(mu);
        f.ranks[static_cast<size_t>(c.rank())] = e.what();
        throw;
      }
    });
  } catch (const Error& e) {
    f.group = e.what();
  }
  return f;
}

// grad against the central difference of loss() (which reads x) at every element of x, step
// eps, within 1e-8 x (1 + |difference|); x is left as it was. Returns the largest |grad -
// difference|.
inline double check_central_differences(std::vector<double>& x, const std::vector<double>& grad,
                                        const char* what, const std::function<double()>& loss,
                                        double eps = 1e-6) {
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double up = loss();
    x[i] = x0 - eps;
    const double down = loss();
    x[i] = x0;
    const double fd = (up - down) / (2 * eps);
    EXPECT_NEAR(grad[i], fd, 1e-8 * (1.0 + std::abs(fd))) << what << "[" << i << "]";
    worst = std::max(worst, std::abs(grad[i] - fd));
  }
  return worst;
}

}  // namespace moba::dist::cptest
