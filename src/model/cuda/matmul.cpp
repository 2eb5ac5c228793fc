#include "model/cuda/matmul.h"

#include <cublasLt.h>

#include <cstdint>
#include <memory>

#include "core/cuda_check.cuh"
#include "core/error.h"

#define CUBLAS_CHECK(call)                                                                  \
  do {                                                                                      \
    cublasStatus_t moba_st_ = (call);                                                       \
    if (moba_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::moba::detail::fail(__FILE__, __LINE__, "cuBLASLt error ", cublasGetStatusName(moba_st_), \
                           " (", cublasGetStatusString(moba_st_), ") in ", #call);          \
  } while (0)

namespace moba::model::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's recommendation for Hopper

void check_dims(const char* what, int64_t M, int64_t K, int64_t N) {
  MOBA_CHECK(M >= 1 && K >= 1 && N >= 1, what, ": sizes must be positive, got M = ", M,
             ", K = ", K, ", N = ", N);
  MOBA_CHECK(M < (int64_t{1} << 31) && K < (int64_t{1} << 31) && N < (int64_t{1} << 31), what,
             ": a size above 2^31 (M = ", M, ", K = ", K, ", N = ", N, ")");
}

}  // namespace

struct Matmul::Entry {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Entry() {
    if (op) cublasLtMatmulDescDestroy(op);
    for (cublasLtMatrixLayout_t l : {a, b, c, d})
      if (l) cublasLtMatrixLayoutDestroy(l);
  }
};

Matmul::Matmul(cudaStream_t stream) : stream_(stream) {
  cublasLtHandle_t h = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&h));
  handle_ = h;
  CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  workspace_bytes_ = kWorkspaceBytes;
}

Matmul::~Matmul() {
  for (auto& [k, e] : cache_) delete e;
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

void Matmul::gemm(Key key, bool trans_a, bool trans_b, const void* a, int64_t lda,
                  const void* b, int64_t ldb, const void* c, void* d, int64_t ldd, bool out_f32) {
  auto lt = static_cast<cublasLtHandle_t>(handle_);
  // The heuristic must know how aligned the pointers are (weights sit at arbitrary offsets
  // of the flat parameter array): an algorithm is cached per alignment class.
  for (const void* p : {a, b, c, static_cast<const void*>(d)}) {
    if (!p) continue;
    const auto addr = reinterpret_cast<uintptr_t>(p);
    while (key.align > 1 && addr % key.align) key.align /= 2;
  }
  MOBA_CHECK(key.align >= 16, "a matmul operand is only ", key.align,
             "-byte aligned; cuBLASLt needs 16 (bf16 widths and offsets a multiple of 8)");
  Entry*& e = cache_[key];
  if (!e) {
    auto fresh = std::make_unique<Entry>();
    const cudaDataType_t in_t = CUDA_R_16BF, out_t = out_f32 ? CUDA_R_32F : CUDA_R_16BF;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&fresh->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(fresh->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                                sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(fresh->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                                sizeof tb));
    // Column-major shapes as stored: A is (m x k) after op, so stored (k x m) when transposed.
    const uint64_t m = key.m, n = key.n, k = key.k;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&fresh->a, in_t, trans_a ? k : m, trans_a ? m : k, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&fresh->b, in_t, trans_b ? n : k, trans_b ? k : n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&fresh->c, out_t, m, n, ldd));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&fresh->d, out_t, m, n, ldd));
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_, sizeof workspace_bytes_));
    // A bf16 output gets no split-K reduction in the output buffer or type: it would be
    // rounded twice (the partial sums, then their sum with C), which tests/model_gpu
    // measured at 1.96x the naive error for the accumulating calls. Reductions in fp32 (the
    // compute type) stay allowed; fp32 outputs allow every scheme.
    const uint32_t schemes =
        out_f32 ? uint32_t{CUBLASLT_REDUCTION_SCHEME_MASK}
                : uint32_t{CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE};  // NONE (0) is always allowed
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes));
    const uint32_t align = static_cast<uint32_t>(key.align);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
        lt, fresh->op, fresh->a, fresh->b, fresh->c, fresh->d, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    MOBA_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0,
               "cuBLASLt has no algorithm for this matmul (op ", key.op, ", m = ", key.m,
               ", n = ", key.n, ", k = ", key.k, "): ", cublasGetStatusString(st),
               " (bf16 rows must be 16-byte aligned: widths a multiple of 8)");
    fresh->algo = res.algo;
    e = fresh.release();
  }
  const float alpha = 1.f, beta = c ? 1.f : 0.f;
  CUBLAS_CHECK(cublasLtMatmul(lt, e->op, &alpha, a, e->a, b, e->b, &beta, c ? c : d, e->c, d, e->d,
                              &e->algo, workspace_, workspace_bytes_, stream_));
}

// Row-major y (M, N) = x (M, K) W^T is column-major y^T (N x M) = W (N x K, stored as the
// column-major K x N matrix W^T, so op T) times x^T (K x M, stored as is, op N).
void Matmul::forward(int64_t M, int64_t K, int64_t N, const bf16* x, const bf16* w, bf16* y,
                     const bf16* residual) {
  check_dims("Matmul::forward", M, K, N);
  gemm({0, N, M, K, residual != nullptr}, true, false, w, K, x, K, residual, y, N, false);
}

void Matmul::forward_f32(int64_t M, int64_t K, int64_t N, const bf16* x, const bf16* w, float* y) {
  check_dims("Matmul::forward_f32", M, K, N);
  gemm({1, N, M, K, false}, true, false, w, K, x, K, nullptr, y, N, true);
}

// dx (M, K) = dy (M, N) W (N, K): column-major dx^T (K x M) = W^T (K x N, stored as is)
// times dy^T (N x M, stored as is).
void Matmul::backward_data(int64_t M, int64_t K, int64_t N, const bf16* dy, const bf16* w,
                           bf16* dx, bool accumulate) {
  check_dims("Matmul::backward_data", M, K, N);
  gemm({2, K, M, N, accumulate}, false, false, w, K, dy, N, accumulate ? dx : nullptr, dx, K,
       false);
}

// dW (N, K) += dy^T (N, M) x (M, K): column-major dW^T (K x N) = x^T (K x M, stored as is)
// times dy (M x N: the stored N x M matrix, op T).
void Matmul::backward_weight(int64_t M, int64_t K, int64_t N, const bf16* x, const bf16* dy,
                             float* dw) {
  check_dims("Matmul::backward_weight", M, K, N);
  gemm({3, K, N, M, true}, false, true, x, K, dy, N, dw, dw, K, true);
}

}  // namespace moba::model::cuda
