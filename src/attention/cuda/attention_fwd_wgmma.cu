// Launchers of the sm_90a warpgroup forwards (fwd_wgmma.cuh, fwd_moba_wgmma.cuh): tensor maps and
// the grids. dense_forward takes the dense kernel by default on an sm_90 device when it was
// built for sm_90a (MOBA_DENSE_FWD=mma selects the mma.sync kernel, =wgmma insists);
// moba_forward takes the MoBA kernels (past blocks over the gather index's tiles, then the
// current block with the merge) where S is a multiple of 128 (MOBA_MOBA_FWD). See
// docs/kernel_notes.md ("wgmma forward", "v11", "v12").
#include <cuda.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/fwd_moba_wgmma.cuh"
#include "attention/cuda/fwd_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/env_choice.h"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

// The contiguous kernels' grid (as the mma.sync forward): 128-row query tiles of the
// longest sequence, heads fastest for short sequences.
constexpr int kQueryTile = 128;
static_assert(WgFwdTraits<64>::kBr == kQueryTile && WgFwdTraits<128>::kBr == kQueryTile &&
                  WgMobaFwdTraits<64, WgMobaMode::kCurrent>::kBr == kQueryTile &&
                  WgMobaFwdTraits<128, WgMobaMode::kCurrent>::kBr == kQueryTile,
              "the contiguous grid's tiles are the kernels' query tiles");

// MOBA_FWD_PINGPONG, read on every call: the consumer warpgroups of the dense and the MoBA
// forward kernels ping-pong their MMAs (fwd_wgmma_step.cuh; docs/kernel_notes.md, "v20").
// Unset, empty or `auto` = where the H200 A/B measured it faster: the dense forward always
// (6-13% at D 64 and 128, 8K-128K), the MoBA forward kernels at D 128 (1.3-2.5%) but not at
// D 64 (4% slower at 32K); 0 = off everywhere; 1 = on everywhere; anything else is an error
// naming the value.
enum class PingPong { kAuto, kOff, kOn };
PingPong pingpong_choice() {
  return static_cast<PingPong>(env_choice("MOBA_FWD_PINGPONG", {"auto", "0", "1"}));
}
bool pingpong_dense() { return pingpong_choice() != PingPong::kOff; }
bool pingpong_moba(int D) {
  const PingPong c = pingpong_choice();
  return c == PingPong::kOn || (c == PingPong::kAuto && D == 128);
}

// The dense kernel: grid (Hq, query tiles, B) heads fastest, else (tiles, Hq, B).
template <int D, bool PP>
void launch_dense_pp(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  using T = WgFwdTraits<D>;
  const int64_t N = plan.layout().tokens();
  const CUtensorMap tq = wg_map_bf16(p.q, N, p.Hq, D, T::kBr, "q");
  const CUtensorMap tk = wg_map_bf16(p.k, N, p.Hkv, D, T::kBc, "k");
  const CUtensorMap tv = wg_map_bf16(p.v, N, p.Hkv, D, T::kBc, "v");
  constexpr auto kernel = attn_fwd_wgmma_kernel<D, PP>;
  wg_configure_once<kernel>(T::kThreads, T::kRegPoolNeeded, T::kSmemBytes,
                            PP ? "MOBA_DENSE_FWD=wgmma (ping-pong)" : "MOBA_DENSE_FWD=wgmma, MOBA_FWD_PINGPONG=0");
  kernel<<<tile_grid(plan, p, p.Hq, kQueryTile), T::kThreads, T::kSmemBytes, stream>>>(tq, tk, tv, p);
  CUDA_CHECK_LAUNCH();
}
template <int D>
void launch_dense(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  if (pingpong_dense())
    launch_dense_pp<D, true>(plan, p, stream);
  else
    launch_dense_pp<D, false>(plan, p, stream);
}

// One launch of a MoBA kernel on a 1-D grid of persistent CTAs. kPast gathers Q itself
// (cp.async): its tm_q parameter is unused (the K map stands in).
template <int D, WgMobaMode MODE, bool PP>
void launch_moba_pp(const Plan& plan, const AttnParams& p, unsigned ctas, cudaStream_t stream) {
  using T = WgMobaFwdTraits<D, MODE>;
  constexpr auto kernel = moba_fwd_wgmma_kernel<D, MODE, PP>;
  wg_configure_once<kernel>(T::kThreads, T::kRegPoolNeeded, T::kSmemBytes,
                            T::kPast ? "MOBA_MOBA_FWD=wgmma (past-block kernel)"
                                     : "MOBA_MOBA_FWD=wgmma (current-block kernel)");
  const int64_t N = plan.layout().tokens();
  const CUtensorMap tk = wg_map_bf16(p.k, N, p.Hkv, D, T::kBc, "k");
  const CUtensorMap tv = wg_map_bf16(p.v, N, p.Hkv, D, T::kBc, "v");
  const CUtensorMap tq = T::kPast ? tk : wg_map_bf16(p.q, N, p.Hq, D, T::kBr, "q");
  kernel<<<ctas, T::kThreads, T::kSmemBytes, stream>>>(tq, tk, tv, p);
  CUDA_CHECK_LAUNCH();
}
template <int D, WgMobaMode MODE>
void launch_moba(const Plan& plan, const AttnParams& p, unsigned ctas, cudaStream_t stream) {
  if (pingpong_moba(D))
    launch_moba_pp<D, MODE, true>(plan, p, ctas, stream);
  else
    launch_moba_pp<D, MODE, false>(plan, p, ctas, stream);
}

template <WgMobaMode MODE>
void launch_moba_d(const Plan& plan, const AttnParams& p, int64_t ctas, cudaStream_t stream) {
  if (plan.layout().head_dim == 64) launch_moba<64, MODE>(plan, p, static_cast<unsigned>(ctas), stream);
  else launch_moba<128, MODE>(plan, p, static_cast<unsigned>(ctas), stream);
}

// The current device's compute capability (major * 10 + minor) and SM count, cached per
// device: the wgmma launchers ask on every call.
struct DeviceInfo {
  int sm = 0, sms = 0;
};
const DeviceInfo& device_info() {
  static DeviceInfo cached[64] = {};  // sm 0 = not asked yet
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  DeviceInfo& c = cached[dev & 63];
  if (c.sm == 0) {
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&c.sms, cudaDevAttrMultiProcessorCount, dev));
    c.sm = major * 10 + minor;
  }
  return c;
}

// Whether the wgmma kernels can run here: an sm_90 device (wgmma and setmaxnreg are
// sm_90a-only) and a kernel compiled for it (a build without sm_90a leaves a trap with a
// handful of registers; see wg_configure). Cached per device.
template <int D>
bool compiled_for_wgmma() {
  using T = WgFwdTraits<D>;
  cudaFuncAttributes fa{};
  CUDA_CHECK(cudaFuncGetAttributes(&fa, attn_fwd_wgmma_kernel<D>));
  return fa.numRegs * T::kThreads >= T::kRegPoolNeeded;
}
bool wgmma_runs_here(int D) {
  static int cached[64][2] = {};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  int& c = cached[dev & 63][D == 64 ? 0 : 1];
  if (c == 0) {
    const bool ok = device_info().sm == 90 && (D == 64 ? compiled_for_wgmma<64>()
                                              : D == 128 && compiled_for_wgmma<128>());
    c = ok ? 1 : 2;
  }
  return c == 1;
}

void check_moba_shape(const Plan& plan) {
  const int64_t D = plan.layout().head_dim, S = plan.config().block_size;
  if (D != 64 && D != 128)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=wgmma: head dim ", D, " (64 or 128)");
  if (S % 128 != 0)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=wgmma: block size ", S,
                         " (a multiple of 128; moba_forward keeps mma.sync for smaller blocks)");
}

// The grid of the persistent MoBA kernels (past blocks, current block), from
// MOBA_MOBA_FWD_GRID: unset, empty or `persistent` = one CTA per SM (384 threads of 168
// registers fill an SM's register file), each taking its tiles in turn (the default);
// `tiles` = one CTA per tile (as the kernels before v12: every CTA's prologue and epilogue
// exposed); a number n = n CTAs (tests: few CTAs, many tiles each). Never more CTAs than
// tiles. Read on every call, as the other switches.
int64_t moba_ctas(int64_t max_tiles) {
  const char* e = std::getenv("MOBA_MOBA_FWD_GRID");
  int64_t n = 0;
  if (e == nullptr || *e == '\0' || std::strcmp(e, "persistent") == 0) {
    // Odd: the CTAs stride through the tiles by the grid size, and in the current-block
    // kernel a tile's work (1 to S/128 key tiles) repeats with the tile index mod S/128;
    // an even stride would give some CTAs only the longest tiles.
    n = device_info().sms;
    n -= (n % 2 == 0 && n > 1);
  } else if (std::strcmp(e, "tiles") == 0) {
    n = max_tiles;
  } else {
    char* end = nullptr;
    n = std::strtoll(e, &end, 10);
    if (end == e || *end != '\0' || n <= 0)
      ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD_GRID=", e,
                           ": expected persistent, tiles or a number of CTAs");
  }
  return std::min(n, max_tiles);
}

}  // namespace

bool wgmma_available(int64_t head_dim) {
  return (head_dim == 64 || head_dim == 128) && wgmma_runs_here(static_cast<int>(head_dim));
}

bool wgmma_switch(const char* var, int64_t head_dim) {
  const char* e = std::getenv(var);
  if (e == nullptr || *e == '\0') return wgmma_available(head_dim);  // the default
  if (std::strcmp(e, "mma") == 0) return false;
  if (std::strcmp(e, "wgmma") == 0) return true;  // the launcher errors if it cannot run
  ::moba::detail::fail(__FILE__, __LINE__, var, "=", e, ": expected mma or wgmma");
  return false;
}

void wg_require_sm90(const char* what) {
  const int sm = device_info().sm;
  if (sm != 90)
    ::moba::detail::fail(__FILE__, __LINE__, what, " needs an sm_90 device (found sm_", sm, ")");
}

void dense_forward_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  wg_require_sm90("MOBA_DENSE_FWD=wgmma");
  const int64_t D = plan.layout().head_dim;
  if (D == 64) launch_dense<64>(plan, p, stream);
  else if (D == 128) launch_dense<128>(plan, p, stream);
  else ::moba::detail::fail(__FILE__, __LINE__, "MOBA_DENSE_FWD=wgmma: head dim ", D, " (64 or 128)");
}

void moba_forward_past_wgmma(const Plan& plan, const AttnParams& p, int64_t max_tiles,
                             cudaStream_t stream) {
  wg_require_sm90("MOBA_MOBA_FWD=wgmma");
  check_moba_shape(plan);
  if (max_tiles <= 0) return;
  // max_tiles bounds the device's tile count (*p.num_tiles - *p.tile_first); CTAs without a
  // tile exit.
  launch_moba_d<WgMobaMode::kPast>(plan, p, moba_ctas(max_tiles), stream);
}

void moba_forward_current_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  wg_require_sm90("MOBA_MOBA_FWD=wgmma");
  check_moba_shape(plan);
  static_assert(WgMobaFwdTraits<64, WgMobaMode::kCurrent>::kBr == kMobaFwdQueryTile &&
                    WgMobaFwdTraits<128, WgMobaMode::kCurrent>::kBr == kMobaFwdQueryTile,
                "the chunked forward's tiles (attention_fwd.cu) are the kernel's");
  // The contiguous grid's tiles, in its order, taken in turn by the persistent CTAs.
  AttnParams pc = p;
  if (pc.batch == 0) {
    const dim3 g = tile_grid(plan, p, p.Hq, kQueryTile);
    pc.batch = static_cast<int>(g.z);
    pc.q_tiles = static_cast<int>(p.heads_fastest ? g.y : g.x);
  }
  const int64_t tiles = static_cast<int64_t>(pc.batch) * pc.Hq * pc.q_tiles;
  launch_moba_d<WgMobaMode::kCurrent>(plan, pc, moba_ctas(tiles), stream);
}

}  // namespace moba::attn::cuda
