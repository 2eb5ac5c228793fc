// Row-major matrix products, through OpenBLAS when the build has it (float: sgemm,
// double: dgemm), else plain loops. Everything the model multiplies goes through linear.h.
#pragma once

#include <cstdint>

namespace moba::model {

// C (M, N) = alpha * op(A) * op(B) + beta * C, row-major; op(A) is (M, K), op(B) is (K, N).
// A is stored (M, K) or, with trans_a, (K, M); B likewise (K, N) or (N, K).
template <typename Real>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A,
          int64_t lda, const Real* B, int64_t ldb, Real beta, Real* C, int64_t ldc);

bool gemm_uses_blas();

}  // namespace moba::model
