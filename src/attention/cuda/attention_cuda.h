// CUDA attention for Hopper: dense causal flash attention and MoBA (gate, forward,
// backward), bf16 inputs and outputs, fp32 accumulation. Shapes as in layout.h; every
// pointer below is device memory:
//   q, out, dout, dq : (N, Hq, D) bf16     k, v, dk, dv : (N, Hkv, D) bf16
//   lse : (N, Hq) fp32, natural log         sel : (N, Hq, K) int32 (gate.h's format)
// A Plan is built once per shape (layout, MoBA config, options): it checks the shape at the
// API edge, uploads the sequence boundaries, and owns the scratch memory the kernels need
// (so its size is the memory the kernels add on top of the tensors).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "attention/layout.h"

namespace moba::attn::cuda {

using bf16 = __nv_bfloat16;

// Head dims with compiled kernels, the smallest block size, the largest top-k: the limits
// declared in attention/layout.h (known to CPU-only builds too).
bool head_dim_supported(int64_t D);
constexpr int64_t kMinBlockSize = kCudaMinBlockSize;
constexpr int64_t kMaxTopK = kCudaMaxTopK;
// Whether the sm_90a (wgmma) kernels run here for head dim D: the current device is sm_90
// and the loaded image of the kernels was built for sm_90a (a build from sm_80 / compute_80
// only, JIT-compiled on an H100, answers false). Where false, the mma.sync kernels run.
bool wgmma_available(int64_t head_dim);

// Where Plans get their device memory (the uploaded boundaries and the scratch): cudaMalloc
// and cudaFree unless set. The Python package routes it to torch's caching allocator, so
// that plans and torch share one pool instead of competing for the GPU's memory. alloc
// returns nullptr on failure; free must accept any pointer alloc returned. Set it before
// building plans; a plan frees its memory with the allocator that was set when it was built.
struct DeviceAllocator {
  void* (*alloc)(size_t bytes, void* ctx) = nullptr;
  void (*free)(void* ptr, void* ctx) = nullptr;
  void* ctx = nullptr;
};
void set_device_allocator(const DeviceAllocator& allocator);

class Plan {
 public:
  // cfg is used by the MoBA functions only; dense attention ignores it.
  Plan(const Layout& layout, const MobaConfig& cfg, const Options& opt);
  // The same with this plan's own allocator instead of the one set_device_allocator set
  // (e.g. a decoder's pool that keeps the scratch from one prefill to the next).
  Plan(const Layout& layout, const MobaConfig& cfg, const Options& opt,
       const DeviceAllocator& allocator);
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  const Layout& layout() const { return layout_; }
  const MobaConfig& config() const { return cfg_; }
  float scale() const { return scale_; }
  // Bytes of device scratch this plan holds now (grows on first use of each kernel).
  size_t workspace_bytes() const { return ws_bytes_; }
  // Largest workspace_bytes() seen so far.
  size_t peak_workspace_bytes() const { return ws_peak_; }

  // --- internal, for the launchers ---
  struct Device {
    int32_t* cu_seqlens = nullptr;    // (B + 1)
    int32_t* block_offset = nullptr;  // (B + 1): first full-block row of each sequence
    int32_t* block_start = nullptr;   // (rows): packed token index where each full block starts
  };
  const Device& dev() const { return dev_; }
  int64_t full_blocks() const { return rows_; }  // full blocks over all sequences
  int64_t max_seq_len() const { return max_len_; }
  // Options::fwd_chunk_tokens as given (-1: the environment's, read on every moba_forward).
  int64_t fwd_chunk_option() const { return fwd_chunk_opt_; }
  // A device buffer kept for the plan's lifetime, identified by `slot`; grown on demand.
  void* scratch(int slot, size_t bytes);
  // The chunked gather index's CTA pieces for chunks of `chunk_tokens` (fwd_chunks.h's
  // fwd_index_pieces: int32 pairs {first token, chunk}), on the device. Uploaded once per
  // chunk size: by the constructor where Options::fwd_chunk_tokens chunks the batch, else
  // on first use; a call with another size synchronises the device, frees the old copy and
  // uploads the new one. Like cu_seqlens, not in workspace_bytes() (8 bytes per 2048
  // tokens and per chunk).
  const int32_t* index_pieces(int64_t chunk_tokens);
  // The selection whose gather lists the scratch holds (set by moba_forward, cleared by
  // moba_gate), so that moba_backward can reuse them.
  const int32_t* indexed_selection() const { return indexed_sel_; }
  void set_indexed_selection(const int32_t* sel) { indexed_sel_ = sel; }

 private:
  Layout layout_;
  MobaConfig cfg_;
  float scale_ = 0.f;
  int64_t rows_ = 0, max_len_ = 0, fwd_chunk_opt_ = -1;
  Device dev_;
  int32_t* pieces_ = nullptr;  // index_pieces' device copy, for chunks of pieces_chunk_
  int64_t pieces_chunk_ = 0;
  std::vector<void*> bufs_;
  std::vector<size_t> sizes_;
  size_t ws_bytes_ = 0, ws_peak_ = 0;
  const int32_t* indexed_sel_ = nullptr;
  DeviceAllocator alloc_;  // the allocator of this plan's memory
};

// Dense causal attention. out and lse are overwritten.
void dense_forward(Plan& plan, const bf16* q, const bf16* k, const bf16* v, bf16* out,
                   float* lse, cudaStream_t stream = nullptr);
// Gradients of sum(out * dout); dq, dk, dv are overwritten.
void dense_backward(Plan& plan, const bf16* q, const bf16* k, const bf16* v, const bf16* out,
                    const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                    cudaStream_t stream = nullptr);

// The MoBA gate (docs/moba.md, steps 2-5) on the device: fp32 block means of K and
// fp32 scores, top-(K-1) past blocks with ties to the more recent block, plus the current.
void moba_gate(Plan& plan, const bf16* q, const bf16* k, int32_t* sel,
               cudaStream_t stream = nullptr);
// The same, also writing the fp32 block means it computes (K > 1 only; with K = 1 the gate
// computes none and this writes nothing) to means_out: the mean of full block j of sequence
// b, kv head h, at means_out[((b * blocks_per_seq + j) * Hkv + h) * D + d] (the layout of
// DecodeCache::means(), blocks_per_seq = its capacity / S), bit-equal to what the cache's
// own kernel computes (both sum in double, exact for bf16). Returns whether it wrote them.
bool moba_gate(Plan& plan, const bf16* q, const bf16* k, int32_t* sel, float* means_out,
               int64_t blocks_per_seq, cudaStream_t stream = nullptr);
// Context parallel's gate (docs/distributed.md, "The GPU path"): a shard, the plan's one
// sequence of whole blocks at positions [pos0, pos0 + T_r) of a longer one, selects among
// all earlier blocks of the whole sequence. moba_gate_shard_means writes the shard's block
// means, split in three bf16 terms, (T_r / S, Hkv, 3, D), into the plan's scratch and returns
// it (valid until the plan's next gate); the ranks all-gather these in rank order (= block
// order) into msplit_all, (pos0 + T_r) / S rows at least, and moba_gate_shard selects for
// the shard's queries against them: block ids of the whole sequence, the rows
// moba_gate would write for these tokens over the whole sequence, bit for bit (the same
// means, products and order). Errors name a shard that is not one sequence of whole blocks,
// or a pos0 that is not a multiple of S.
const bf16* moba_gate_shard_means(Plan& plan, const bf16* k, cudaStream_t stream = nullptr);
void moba_gate_shard(Plan& plan, const bf16* q, const bf16* msplit_all, int64_t pos0,
                     int32_t* sel, cudaStream_t stream = nullptr);
// MoBA attention over a given selection (from moba_gate or the CPU gate).
void moba_forward(Plan& plan, const int32_t* sel, const bf16* q, const bf16* k, const bf16* v,
                  bf16* out, float* lse, cudaStream_t stream = nullptr);
// moba_backward reuses the gather lists that moba_forward built for the same `sel` pointer
// on this plan (as in training: gate, forward, backward); do not change the selection's
// contents between the two without calling moba_forward again.
void moba_backward(Plan& plan, const int32_t* sel, const bf16* q, const bf16* k,
                   const bf16* v, const bf16* out, const float* lse, const bf16* dout,
                   bf16* dq, bf16* dk, bf16* dv, cudaStream_t stream = nullptr);

}  // namespace moba::attn::cuda

namespace moba::attn::cuda {

// Fills x with N(0, stddev^2) bf16 draws from a counter-based generator (for benchmarks:
// no host round trip of large tensors).
void fill_random_bf16(bf16* x, size_t n, uint64_t seed, float stddev = 1.f,
                      cudaStream_t stream = nullptr);

}  // namespace moba::attn::cuda

namespace moba::attn::cuda {

// Per-phase timing, for the benchmark's breakdown: while enabled, every launcher records a
// CUDA event after each of its phases (gate, index, past, current, delta, bwd, ...).
// take_phase_times() synchronizes and returns (phase, ms since the previous mark) pairs,
// the first measured from the call to enable, and clears the log.
void enable_phase_timing(bool on, cudaStream_t stream = nullptr);
std::vector<std::pair<const char*, float>> take_phase_times();
// Records a phase boundary on stream when phase timing is on (callers outside the
// attention, e.g. the decoder's layers, mark theirs too). name: a string literal.
void mark_phase(const char* name, cudaStream_t stream);

}  // namespace moba::attn::cuda
