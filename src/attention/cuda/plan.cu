// Plan: the API-edge checks, the device copies of the sequence boundaries and the scratch
// buffers of the kernels.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/internal.h"
#include "attention/fwd_chunks.h"
#include "attention/gate.h"
#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::attn::cuda {

bool head_dim_supported(int64_t D) { return cuda_head_dim_supported(D); }

namespace {

DeviceAllocator g_allocator;  // set_device_allocator; empty = cudaMalloc / cudaFree

void* device_alloc(const DeviceAllocator& a, size_t bytes) {
  void* p = nullptr;
  if (a.alloc) {
    p = a.alloc(bytes, a.ctx);
    MOBA_CHECK(p != nullptr, "CUDA error: the device allocator failed to provide ", bytes,
               " bytes of attention scratch");
  } else {
    CUDA_CHECK(cudaMalloc(&p, bytes));
  }
  return p;
}

void device_free(const DeviceAllocator& a, void* p) {
  if (!p) return;
  if (a.free) a.free(p, a.ctx);
  else cudaFree(p);
}

int32_t* upload(const DeviceAllocator& a, const std::vector<int32_t>& host) {
  const size_t bytes = sizeof(int32_t) * std::max<size_t>(1, host.size());
  int32_t* dev = static_cast<int32_t*>(device_alloc(a, bytes));
  if (!host.empty())
    CUDA_CHECK(cudaMemcpy(dev, host.data(), sizeof(int32_t) * host.size(), cudaMemcpyHostToDevice));
  return dev;
}

}  // namespace

void set_device_allocator(const DeviceAllocator& allocator) { g_allocator = allocator; }

Plan::Plan(const Layout& layout, const MobaConfig& cfg, const Options& opt)
    : Plan(layout, cfg, opt, g_allocator) {}

Plan::Plan(const Layout& layout, const MobaConfig& cfg, const Options& opt,
           const DeviceAllocator& allocator)
    : layout_(layout), cfg_(cfg), bufs_(kNumSlots, nullptr), sizes_(kNumSlots, 0),
      alloc_(allocator) {
  layout_.validate();
  cfg_.validate();
  const int64_t D = layout_.head_dim, S = cfg_.block_size, K = cfg_.top_k;
  MOBA_CHECK(head_dim_supported(D), "CUDA attention supports head dim 64 or 128, got ", D);
  MOBA_CHECK(S >= kMinBlockSize && (S & (S - 1)) == 0,
             "CUDA MoBA needs a block size S that is a power of two >= ", kMinBlockSize, ", got ", S);
  MOBA_CHECK(K >= 1 && K <= kMaxTopK, "CUDA MoBA supports top-k K in 1..", kMaxTopK, ", got ", K);
  // Dense sizes here (MoBA's gather entries where MoBA runs: moba_gate, moba_forward,
  // moba_backward): offsets are 64-bit, row ids and counts int32 (layout.h).
  check_cuda_sizes(layout_, nullptr);
  scale_ = static_cast<float>(opt.scale_for(layout_));
  max_len_ = layout_.max_seq_len();
  fwd_chunk_opt_ = opt.fwd_chunk_tokens;
  if (fwd_chunk_opt_ >= 0) (void)fwd_chunks(layout_, cfg_, fwd_chunk_opt_);  // validates it

  std::vector<int32_t> cu, offset, start;
  for (int64_t c : layout_.cu_seqlens) cu.push_back(static_cast<int32_t>(c));
  for (int64_t b = 0; b <= layout_.batch(); ++b)
    offset.push_back(static_cast<int32_t>(full_block_offset(layout_, cfg_, b)));
  for (int64_t b = 0; b < layout_.batch(); ++b)
    for (int64_t j = 0; j < layout_.seq_len(b) / S; ++j)
      start.push_back(static_cast<int32_t>(layout_.seq_begin(b) + j * S));
  rows_ = static_cast<int64_t>(start.size());
  dev_.cu_seqlens = upload(alloc_, cu);
  dev_.block_offset = upload(alloc_, offset);
  dev_.block_start = upload(alloc_, start);
  if (fwd_chunk_opt_ > 0 && fwd_chunks(layout_, cfg_, fwd_chunk_opt_).size() > 1)
    (void)index_pieces(fwd_chunk_opt_);
}

const int32_t* Plan::index_pieces(int64_t chunk_tokens) {
  if (pieces_ != nullptr && pieces_chunk_ == chunk_tokens) return pieces_;
  const std::vector<int32_t> host = fwd_index_pieces(fwd_chunks(layout_, cfg_, chunk_tokens));
  if (pieces_ != nullptr) {
    // Freed at once: the stream may still read the old pieces, so wait for the device.
    CUDA_CHECK(cudaDeviceSynchronize());
    device_free(alloc_, pieces_);
    pieces_ = nullptr;
  }
  pieces_ = upload(alloc_, host);
  pieces_chunk_ = chunk_tokens;
  return pieces_;
}

Plan::~Plan() {
  device_free(alloc_, dev_.cu_seqlens);
  device_free(alloc_, dev_.block_offset);
  device_free(alloc_, dev_.block_start);
  device_free(alloc_, pieces_);
  for (void* p : bufs_) device_free(alloc_, p);
}

void* Plan::scratch(int slot, size_t bytes) {
  bytes = std::max<size_t>(bytes, 16);
  if (sizes_[slot] < bytes) {
    // Freed at once: the stream may still use the old buffer, so wait for the device.
    if (bufs_[slot]) {
      CUDA_CHECK(cudaDeviceSynchronize());
      device_free(alloc_, bufs_[slot]);
      ws_bytes_ -= sizes_[slot];
      bufs_[slot] = nullptr;
      sizes_[slot] = 0;
    }
    bufs_[slot] = device_alloc(alloc_, bytes);
    sizes_[slot] = bytes;
    ws_bytes_ += bytes;
    ws_peak_ = std::max(ws_peak_, ws_bytes_);
  }
  return bufs_[slot];
}

}  // namespace moba::attn::cuda

namespace moba::attn::cuda {
namespace {

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_random_kernel(bf16* x, size_t n, uint64_t seed, float stddev) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = splitmix64(seed * 0x100000001b3ull + i);
    // Box-Muller on two 24-bit uniforms in (0, 1].
    const float u1 = (static_cast<float>(r >> 40) + 1.f) * (1.f / 16777216.f);
    const float u2 = static_cast<float>((r >> 16) & 0xffffff) * (1.f / 16777216.f);
    x[i] = __float2bfloat16(stddev * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

}  // namespace

void fill_random_bf16(bf16* x, size_t n, uint64_t seed, float stddev, cudaStream_t stream) {
  fill_random_kernel<<<1024, 256, 0, stream>>>(x, n, seed, stddev);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::attn::cuda

namespace moba::attn::cuda {
namespace {
bool g_timing = false;
std::vector<std::pair<const char*, cudaEvent_t>> g_marks;
}  // namespace

void mark_phase(const char* name, cudaStream_t stream) {
  if (!g_timing) return;
  cudaEvent_t e;
  CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventRecord(e, stream));
  g_marks.emplace_back(name, e);
}

void enable_phase_timing(bool on, cudaStream_t stream) {
  g_timing = on;
  if (on) {
    g_marks.clear();
    mark_phase("start", stream);
  }
}

std::vector<std::pair<const char*, float>> take_phase_times() {
  std::vector<std::pair<const char*, float>> out;
  if (g_marks.empty()) return out;
  CUDA_CHECK(cudaEventSynchronize(g_marks.back().second));
  for (size_t i = 1; i < g_marks.size(); ++i) {
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, g_marks[i - 1].second, g_marks[i].second));
    out.emplace_back(g_marks[i].first, ms);
  }
  for (auto& m : g_marks) CUDA_CHECK(cudaEventDestroy(m.second));
  g_marks.clear();
  return out;
}

}  // namespace moba::attn::cuda
