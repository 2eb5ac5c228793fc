// CUDA layer kernels of the GPU trainer: RMSNorm, cross-entropy, SwiGLU, RoPE, AdamW,
// embedding, forward and backward. Each mirrors a CPU layer (src/model/*.h,
// src/train/adamw.*) whose maths it follows exactly; tests/model_gpu checks them against it.
// Mixed precision: activations and their gradients bf16, weights' gradients, norm weights,
// statistics (rstd, lse, losses) and optimizer state fp32, every sum in fp32 (AdamW: double).
// Every pointer is device memory. Each launcher checks its sizes at the API edge
// (MOBA_CHECK: moba::Error with the argument named) and its launch (CUDA_CHECK).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moba::model {
struct RopeTable;
}

namespace moba::model::cuda {

using bf16 = __nv_bfloat16;

// ---- RMSNorm (rmsnorm.h) ---------------------------------------------------------------
struct RmsNormParams {
  int64_t M = 0, C = 0;  // rows, width
  float eps = 1e-5f;
};
// x, y (M, C) bf16; w (C) fp32; rstd (M) fp32 = 1 / rms(x), kept for the backward.
void rmsnorm_forward(const RmsNormParams& p, const bf16* x, const float* w, bf16* y, float* rstd,
                     cudaStream_t stream = nullptr);
// Bytes of scratch rmsnorm_backward needs (per-chunk partial sums of dw).
size_t rmsnorm_backward_workspace(const RmsNormParams& p);
// dx (M, C) bf16, overwritten or (accumulate_dx) added to: the residual stream's gradient.
// dw (C) fp32 +=. dw is reduced deterministically: fp32 partial sums over fixed chunks of
// rows, then the chunks summed in order (no atomics), so runs repeat bit for bit.
void rmsnorm_backward(const RmsNormParams& p, const bf16* x, const float* w, const float* rstd,
                      const bf16* dy, bf16* dx, float* dw, bool accumulate_dx, void* workspace,
                      cudaStream_t stream = nullptr);

// ---- Cross-entropy (cross_entropy.h) ---------------------------------------------------
enum class LogitsType { kBf16, kFp32 };
struct CrossEntropyParams {
  int64_t M = 0, V = 0;  // rows, vocabulary (V <= kMaxVocab)
  LogitsType dtype = LogitsType::kBf16;
};
constexpr int64_t kMaxVocab = int64_t{1} << 20;
// logits (M, V) of `dtype`; targets (M) int32 in [0, V); mask (M) uint8, nullptr = every row
// counts. losses (M) fp32 = logsumexp(row) - row[target], 0 where masked; lse (M) fp32 for
// the backward. A target outside [0, V) gives a NaN loss (the trainer's NaN check names it).
void cross_entropy_forward(const CrossEntropyParams& p, const void* logits, const int32_t* targets,
                           const uint8_t* mask, float* losses, float* lse,
                           cudaStream_t stream = nullptr);
// dlogits (M, V) of `dtype` = scale * (softmax - onehot(target)), 0 on masked rows. May alias
// logits (in place, as on the CPU, where the probabilities overwrite the logits).
void cross_entropy_backward(const CrossEntropyParams& p, const void* logits, const float* lse,
                            const int32_t* targets, const uint8_t* mask, float scale,
                            void* dlogits, cudaStream_t stream = nullptr);

// forward and backward in one launch (the training step's): the same outputs, bit for bit,
// with one pass less over the logits in device memory. dlogits may alias logits.
void cross_entropy_fused(const CrossEntropyParams& p, const void* logits, const int32_t* targets,
                         const uint8_t* mask, float scale, float* losses, float* lse,
                         void* dlogits, cudaStream_t stream = nullptr);

// ---- SwiGLU (swiglu.h) -----------------------------------------------------------------
// a, b, h (n) bf16: h = silu(a) * b.
void swiglu_forward(int64_t n, const bf16* a, const bf16* b, bf16* h, cudaStream_t stream = nullptr);
// da, db (n) bf16, overwritten. May not alias a or b.
void swiglu_backward(int64_t n, const bf16* a, const bf16* b, const bf16* dh, bf16* da, bf16* db,
                     cudaStream_t stream = nullptr);
// The fused gate/up projection (one matmul against [w_gate; w_up], adjacent in the
// parameter array): ab (M, 2F) bf16, each row [a | b]. h (M, F) = silu(a) * b, the same
// bits as swiglu_forward on contiguous copies of a and b. h may not overlap ab.
void swiglu_forward_rows(int64_t M, int64_t F, const bf16* ab, bf16* h,
                         cudaStream_t stream = nullptr);
// dh (M, F); dab (M, 2F), rows [da | db], overwritten: swiglu_backward's bits. dab may not
// overlap ab or dh.
void swiglu_backward_rows(int64_t M, int64_t F, const bf16* ab, const bf16* dh, bf16* dab,
                          cudaStream_t stream = nullptr);

// ---- RoPE (rope.h) ---------------------------------------------------------------------
// cos/sin (T, D/2) fp32 on the device, rounded from the CPU's double table (so both paths
// share one set of angles). RAII; not copyable.
class RopeTableCuda {
 public:
  explicit RopeTableCuda(const model::RopeTable& table);
  ~RopeTableCuda();
  RopeTableCuda(const RopeTableCuda&) = delete;
  RopeTableCuda& operator=(const RopeTableCuda&) = delete;
  int64_t T() const { return T_; }
  int64_t half() const { return half_; }
  const float* cos() const { return cos_; }  // (T, D/2)
  const float* sin() const { return sin_; }  // (T, D/2)

 private:
  int64_t T_ = 0, half_ = 0;
  float* cos_ = nullptr;
  float* sin_ = nullptr;
};
struct RopeParams {
  int64_t M = 0, H = 0;  // tokens, heads; D = 2 * table.half()
  bool inverse = false;  // rotate by -angle: the backward (dx = R^T dy)
};
// x (M, H, D) bf16 rotated in place; pos (M) int32, each token's position in its document
// (restarting at every document, as the CPU model does). A position outside [0, T) writes NaN.
void rope_apply(const RopeParams& p, const RopeTableCuda& table, const int32_t* pos, bf16* x,
                cudaStream_t stream = nullptr);

// The fused QKV projection (one matmul against [wq; wk; wv], adjacent in the parameter
// array): its rows hold a token's Hq heads of q, then Hkv of k, then Hkv of v, D each.
struct QkvParams {
  int64_t M = 0, Hq = 0, Hkv = 0;  // tokens, query heads, key/value heads; D = 2 * table.half()
};
// Forward: qkv (M, (Hq + 2 Hkv) D) bf16 -> q (M, Hq, D) and k (M, Hkv, D) rotated as
// rope_apply (forward) rotates them in place, and v (M, Hkv, D) copied: the contiguous
// tensors the attention kernels read, bit for bit what rope_apply gives on copies of the q
// and k parts. pos as rope_apply's (a position outside [0, T) writes NaN into q and k).
// No two buffers may overlap.
void rope_split(const QkvParams& p, const RopeTableCuda& table, const int32_t* pos,
                const bf16* qkv, bf16* q, bf16* k, bf16* v, cudaStream_t stream = nullptr);
// Backward: dq (M, Hq, D), dk (M, Hkv, D) rotated back (rope_apply with inverse = true)
// and dv (M, Hkv, D) copied into one row buffer dqkv (M, (Hq + 2 Hkv) D), the fused
// matmul's dy. dq, dk, dv are not changed; dqkv may not overlap them.
void rope_merge(const QkvParams& p, const RopeTableCuda& table, const int32_t* pos,
                const bf16* dq, const bf16* dk, const bf16* dv, bf16* dqkv,
                cudaStream_t stream = nullptr);

// ---- AdamW (train/adamw.h) ---------------------------------------------------------------
struct AdamWParams {
  int64_t n = 0;    // parameters
  int64_t t = 1;    // step number after this update (1 for the first), for bias correction
  double lr = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  float grad_scale = 1.0f;  // multiplies each gradient first: clipping, fused (clip_grads)
};
// params, m, v (n) fp32 updated in place; grads (n) fp32; decay (n) uint8, 1 where weight
// decay applies (the CPU optimizer's per-element flag); params_bf16 (n), optional (nullptr):
// the bf16 copy the forward reads. Per element in double, as the CPU step.
void adamw_step(const AdamWParams& p, float* params, const float* grads, float* m, float* v,
                const uint8_t* decay, bf16* params_bf16, cudaStream_t stream = nullptr);

// ---- Embedding -------------------------------------------------------------------------
struct EmbeddingParams {
  int64_t M = 0, V = 0, C = 0;  // tokens, vocabulary, width
};
// out (M, C) bf16 = table[tokens[m]]; table (V, C) bf16; a token outside [0, V) writes NaN.
void embedding_forward(const EmbeddingParams& p, const int32_t* tokens, const bf16* table, bf16* out,
                       cudaStream_t stream = nullptr);
// dtable (V, C) fp32 += dout rows scattered by token, through fp32 atomics: the sum order of
// a repeated token's rows varies between runs (results agree to fp32 rounding, not bit for
// bit). Tokens outside [0, V) are skipped.
void embedding_backward(const EmbeddingParams& p, const int32_t* tokens, const bf16* dout,
                        float* dtable, cudaStream_t stream = nullptr);

}  // namespace moba::model::cuda
