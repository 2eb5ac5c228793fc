// Matmuls of the GPU trainer through cuBLASLt: bf16 inputs, fp32 accumulation. Layouts are
// the CPU model's (model/linear.h): activations row-major (M, K); weights (N, K) row-major,
// as PyTorch stores them, so y = x W^T. Every pointer is device memory; all work goes on the
// Matmul's stream. A Matmul owns a cuBLASLt handle, a workspace and a cache of the algorithm
// cuBLASLt's heuristic picked per shape, so a training step asks the heuristic once per shape.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

namespace moba::model::cuda {

using bf16 = __nv_bfloat16;

class Matmul {
 public:
  explicit Matmul(cudaStream_t stream = nullptr);
  ~Matmul();
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  cudaStream_t stream() const { return stream_; }

  // y (M, N) bf16 = x (M, K) W^T [+ residual (M, N) bf16]; W (N, K) bf16. residual may be
  // y itself (y += x W^T) or another buffer (y = residual + x W^T: the residual add fused).
  void forward(int64_t M, int64_t K, int64_t N, const bf16* x, const bf16* w, bf16* y,
               const bf16* residual = nullptr);
  // Same with fp32 output (no residual): logits for small vocabularies, tests.
  void forward_f32(int64_t M, int64_t K, int64_t N, const bf16* x, const bf16* w, float* y);
  // dx (M, K) bf16 = dy (M, N) W, or dx += dy W (accumulate).
  void backward_data(int64_t M, int64_t K, int64_t N, const bf16* dy, const bf16* w, bf16* dx,
                     bool accumulate);
  // dw (N, K) fp32 += dy^T x: the weight's gradient, accumulated in fp32 across calls
  // (micro-batches, a tied embedding's two uses) with no extra pass.
  void backward_weight(int64_t M, int64_t K, int64_t N, const bf16* x, const bf16* dy, float* dw);

 private:
  struct Key {
    int op;  // 0 forward, 1 forward_f32, 2 backward_data, 3 backward_weight
    int64_t m, n, k;
    bool beta;
    int align = 256;  // the smallest alignment (bytes, up to 256) of the four pointers
    bool operator<(const Key& o) const {
      return std::tie(op, m, n, k, beta, align) < std::tie(o.op, o.m, o.n, o.k, o.beta, o.align);
    }
  };
  struct Entry;
  // D (col-major m x n) = op(A) op(B) (+ C): the column-major view of the row-major calls.
  void gemm(Key key, bool trans_a, bool trans_b, const void* a, int64_t lda,
            const void* b, int64_t ldb, const void* c, void* d, int64_t ldd, bool out_f32);

  cudaStream_t stream_ = nullptr;
  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Entry*> cache_;
};

}  // namespace moba::model::cuda
