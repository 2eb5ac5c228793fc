#include "model/gemm.h"

#include <algorithm>
#include <mutex>
#include <vector>

#include "model/parallel.h"

#if MOBA_WITH_BLAS
#include <cblas.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace moba::model {

bool gemm_uses_blas() { return MOBA_WITH_BLAS + 0 != 0; }

#if MOBA_WITH_BLAS
namespace {

// OpenBLAS runs single-threaded and we split the rows of C over OpenMP threads ourselves:
// with both OpenBLAS's pthreads and OpenMP's pool, each spins while the other works, and
// on 2 cores that cost 80% of a training step. One pool, no contention. Each row of C is
// computed by one sgemm call whatever the thread count, over the same K order, so
// results do not depend on the thread count either.
void single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

template <typename Real, typename Fn>
void split_rows(bool ta, int64_t M, int64_t work, const Real* A, int64_t lda, Real* C, int64_t ldc,
                Fn&& call) {
  single_threaded_blas();
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) threads = omp_get_max_threads();
#endif
  // Below ~64 rows per thread, or little work in all, the split costs more than it gains.
  if (work < 16 * kParallelMinWork) threads = 1;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(threads, M / 64));
  if (chunks == 1) {
    call(M, A, C);
    return;
  }
  const int64_t per = (M + chunks - 1) / chunks;
#pragma omp parallel for schedule(static) num_threads(static_cast <int>(chunks))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * per, rows = std::min(M, i0 + per) - i0;
    if (rows > 0) call(rows, ta ? A + i0 : A + i0 * lda, C + i0 * ldc);
  }
}

// cblas_sgemm or cblas_dgemm, by the element type.
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
               const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha,
               const double* A, int lda, const double* B, int ldb, double beta, double* C,
               int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

template <typename Real>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t lda,
          const Real* B, int64_t ldb, Real beta, Real* C, int64_t ldc) {
  split_rows(ta, M, M * N * K, A, lda, C, ldc, [&](int64_t rows, const Real* a, Real* c) {
    blas_gemm(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(rows), static_cast<int>(N), static_cast<int>(K), alpha, a,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  });
}
#else
// Fallback without a BLAS: one output row per iteration, accumulated in double.
template <typename Real>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t lda,
          const Real* B, int64_t ldb, Real beta, Real* C, int64_t ldc) {
#pragma omp parallel for schedule(static) if (M * N * K >= 16 * kParallelMinWork)
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      Real& c = C[i * ldc + j];
      c = static_cast<Real>(alpha * acc + (beta == Real(0) ? 0.0 : beta * c));
    }
  }
}
#endif

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace moba::model
