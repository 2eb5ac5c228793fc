// libmoba_ops.so, CUDA half: the C ABI of moba_ops.h over attention/cuda (bf16 kernels),
// with a small cache of Plans.
//
// Plans: a Plan uploads cu_seqlens and owns the kernels' scratch, so building one per call
// would cost a cudaMalloc and a copy each time. Plans are cached by everything they depend
// on: (device, stream, cu_seqlens contents, Hq, Hkv, D, S, K, scale); the stream is part of
// the key because a plan's scratch must not be shared by two streams running at once. The
// cache keeps the kMaxPlans most recently used; one mutex serializes the (asynchronous)
// launches, so the cache and a plan's scratch are never touched by two threads at once.
// The plans' device memory comes from the caller's allocator when one is set (the Python
// package: torch's caching allocator), so that plans do not compete with torch's pool.
//
// Gather-list reuse: moba_backward reuses the gather lists that moba_forward built for the
// same `sel` POINTER on the same plan (attention_bwd.cu). From Python that pointer is not a
// safe identity: torch's caching allocator hands the same address to the next selection
// once the old one is freed, and in a model every layer runs its forward (on the same
// plan: same shape) before any backward, so the plan holds the LAST layer's lists when the
// first layer's backward arrives. Reusing on the pointer alone would read another layer's
// (or another step's) lists and give silently wrong gradients. Hence every forward gets a
// process-wide generation id, returned to the caller, recorded on its plan, and passed
// back by the backward: the lists are reused only when the plan's indexed selection is
// this sel AND its latest forward is this generation; otherwise the backward rebuilds them
// (a few microseconds of counting sort). In a model this means the last layer reuses and
// the others rebuild; in gate, forward, backward order everything reuses.
#include <cuda_runtime.h>

#include <atomic>
#include <bit>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "attention/cuda/attention_cuda.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "pyops/guard.h"
#include "pyops/moba_ops.h"

namespace {

using namespace moba;
namespace acu = moba::attn::cuda;
using acu::bf16;
using moba::pyops::guard;

constexpr size_t kMaxPlans = 8;

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// The caller's allocator (moba_cuda_set_allocator), adapted to attention/cuda's.
struct CallerAllocator {
  moba_ops_alloc_fn alloc = nullptr;
  moba_ops_free_fn free = nullptr;
  void* ctx = nullptr;
};
CallerAllocator g_caller;
void* caller_alloc(size_t bytes, void*) { return g_caller.alloc(bytes, g_caller.ctx); }
void caller_free(void* p, void*) { g_caller.free(p, g_caller.ctx); }

struct Key {
  int device = 0;
  uintptr_t stream = 0;
  std::vector<int64_t> cu;  // (B + 1)
  int64_t Hq = 0, Hkv = 0, D = 0, S = 0, K = 0;
  uint64_t scale_bits = 0;
  bool operator==(const Key&) const = default;
};

struct Entry {
  Key key;
  std::unique_ptr<acu::Plan> plan;
  int64_t generation = -1;  // id of the latest moba forward on this plan; -1: none valid
};

struct Cache {
  std::mutex mu;
  std::list<Entry> entries;  // most recently used first
};
// Never destroyed: freeing device memory from a static destructor at exit can run after
// the CUDA runtime is gone.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}
std::atomic<int64_t> g_generation{0};

// The plan for this call, built or found; caller holds cache().mu.
Entry& plan_for(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                int64_t K, double scale, void* stream) {
  MOBA_CHECK(cu != nullptr && B >= 1, "cu_seqlens must hold at least 2 offsets, got B = ", B);
  Key key;
  CUDA_CHECK(cudaGetDevice(&key.device));
  key.stream = reinterpret_cast<uintptr_t>(stream);
  key.cu.assign(cu, cu + B + 1);
  key.Hq = Hq;
  key.Hkv = Hkv;
  key.D = D;
  key.S = S;
  key.K = K;
  key.scale_bits = std::bit_cast<uint64_t>(scale > 0 ? scale : 0.0);
  auto& list = cache().entries;
  for (auto it = list.begin(); it != list.end(); ++it)
    if (it->key == key) {
      list.splice(list.begin(), list, it);
      return list.front();
    }
  const attn::Layout l = moba::pyops::layout_of(cu, B, Hq, Hkv, D);
  // The plan uploads its boundaries with a blocking copy into memory that the allocator
  // (torch's pool) may just have taken back from work still queued on this stream.
  CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
  auto plan = std::make_unique<acu::Plan>(l, attn::MobaConfig{S, K},
                                          attn::Options{scale > 0 ? scale : 0.0});
  if (list.size() >= kMaxPlans) list.pop_back();  // frees its device memory
  list.push_front(Entry{std::move(key), std::move(plan), -1});
  return list.front();
}

}  // namespace

extern "C" {

int moba_ops_has_cuda(void) { return 1; }

int moba_cuda_gate(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                   int64_t K, const void* q, const void* k, int32_t* sel, void* stream) {
  return guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    Entry& e = plan_for(cu, B, Hq, Hkv, D, S, K, 0.0, stream);
    e.generation = -1;  // moba_gate drops the plan's gather lists
    acu::moba_gate(*e.plan, static_cast<const bf16*>(q), static_cast<const bf16*>(k), sel,
                   as_stream(stream));
  });
}

int moba_cuda_moba_forward(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                           int64_t S, int64_t K, double scale, int run_gate, int32_t* sel,
                           const void* q, const void* k, const void* v, void* out, float* lse,
                           void* stream, int64_t* generation) {
  return guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    Entry& e = plan_for(cu, B, Hq, Hkv, D, S, K, scale, stream);
    e.generation = -1;
    if (run_gate)
      acu::moba_gate(*e.plan, static_cast<const bf16*>(q), static_cast<const bf16*>(k), sel,
                     as_stream(stream));
    acu::moba_forward(*e.plan, sel, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                      static_cast<const bf16*>(v), static_cast<bf16*>(out), lse,
                      as_stream(stream));
    e.generation = ++g_generation;
    if (generation) *generation = e.generation;
  });
}

int moba_cuda_moba_backward(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                            int64_t S, int64_t K, double scale, const int32_t* sel,
                            int64_t generation, const void* q, const void* k, const void* v,
                            const void* out, const float* lse, const void* dout, void* dq,
                            void* dk, void* dv, void* stream) {
  return guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    Entry& e = plan_for(cu, B, Hq, Hkv, D, S, K, scale, stream);
    // See the file comment: reuse only the lists of this very forward.
    if (generation < 0 || e.generation != generation) e.plan->set_indexed_selection(nullptr);
    acu::moba_backward(*e.plan, sel, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                       static_cast<const bf16*>(v), static_cast<const bf16*>(out), lse,
                       static_cast<const bf16*>(dout), static_cast<bf16*>(dq),
                       static_cast<bf16*>(dk), static_cast<bf16*>(dv), as_stream(stream));
    // Lists rebuilt here belong to no forward's id: a later backward rebuilds again.
    if (e.generation != generation) e.generation = -1;
  });
}

int moba_cuda_dense_forward(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                            double scale, const void* q, const void* k, const void* v,
                            void* out, float* lse, void* stream) {
  return guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    // Dense attention ignores the MoBA config; the smallest valid one keys dense plans.
    Entry& e = plan_for(cu, B, Hq, Hkv, D, acu::kMinBlockSize, 1, scale, stream);
    acu::dense_forward(*e.plan, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                       static_cast<const bf16*>(v), static_cast<bf16*>(out), lse,
                       as_stream(stream));
  });
}

int moba_cuda_dense_backward(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                             double scale, const void* q, const void* k, const void* v,
                             const void* out, const float* lse, const void* dout, void* dq,
                             void* dk, void* dv, void* stream) {
  return guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    Entry& e = plan_for(cu, B, Hq, Hkv, D, acu::kMinBlockSize, 1, scale, stream);
    acu::dense_backward(*e.plan, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                        static_cast<const bf16*>(v), static_cast<const bf16*>(out), lse,
                        static_cast<const bf16*>(dout), static_cast<bf16*>(dq),
                        static_cast<bf16*>(dk), static_cast<bf16*>(dv), as_stream(stream));
  });
}

int moba_cuda_wgmma_available(int64_t D) {
  int r = 0;
  const int rc = guard([&] { r = acu::wgmma_available(D) ? 1 : 0; });
  return rc == MOBA_OPS_OK ? r : 0;
}

int moba_cuda_set_allocator(moba_ops_alloc_fn alloc, moba_ops_free_fn free_fn, void* ctx) {
  return guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    MOBA_CHECK((alloc == nullptr) == (free_fn == nullptr),
               "moba_cuda_set_allocator: give both alloc and free, or neither");
    // Plans built before keep the allocator they were built with (see attention_cuda.h);
    // g_caller is only read by new ones, so drop the old ones first.
    cache().entries.clear();
    g_caller = CallerAllocator{alloc, free_fn, ctx};
    acu::DeviceAllocator a;
    if (alloc) {
      a.alloc = caller_alloc;
      a.free = caller_free;
    }
    acu::set_device_allocator(a);
  });
}

int moba_cuda_clear_plans(void) {
  int n = 0;
  guard([&] {
    std::lock_guard<std::mutex> lock(cache().mu);
    n = static_cast<int>(cache().entries.size());
    cache().entries.clear();
  });
  return n;
}

}  // extern "C"
