// A linear map without bias, y = x W^T, with W stored (out, in) as in params.h.
#pragma once

#include <cstdint>

#include "model/gemm.h"

namespace moba::model {

// y (M, N) = x (M, K) W^T, W (N, K).
template <typename Real>
void linear_forward(int64_t M, int64_t K, int64_t N, const Real* x, const Real* W, Real* y) {
  gemm<Real>(false, true, M, N, K, Real(1), x, K, W, K, Real(0), y, N);
}

// dx (M, K) = dy W (overwritten, or added to when accumulate_dx); dW (N, K) += dy^T x.
template <typename Real>
void linear_backward(int64_t M, int64_t K, int64_t N, const Real* x, const Real* W, const Real* dy,
                     Real* dx, Real* dW, bool accumulate_dx = false) {
  gemm<Real>(false, false, M, K, N, Real(1), dy, N, W, K, accumulate_dx ? Real(1) : Real(0), dx, K);
  gemm<Real>(true, false, N, K, M, Real(1), dy, N, x, K, Real(1), dW, K);
}

}  // namespace moba::model
