// moba info: version, build configuration, visible CUDA devices and the kernel switches
// (environment variables the CUDA kernels read).
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "cli/commands.h"
#include "core/build_info.h"
#include "core/env_choice.h"

namespace moba::cli {
namespace {

// The MOBA_* switches of the CUDA code, as src/attention/cuda/internal.h (wgmma_switch) and
// src/model/cuda/rmsnorm.cu describe them. The kernels read them on every call (tests switch
// kernels within one process), so this shows what the next call would see.
struct KernelSwitch {
  const char* name;
  // The accepted values, the default's first (unset or empty = the default), null-padded.
  std::array<const char*, 5> values;
  const char* default_meaning;
  bool count_ok = false;  // a positive whole number is accepted too

  std::span<const char* const> accepted() const {
    size_t n = 0;
    while (n < values.size() && values[n] != nullptr) ++n;
    return {values.data(), n};
  }
};
constexpr KernelSwitch kSwitches[] = {
    {"MOBA_DENSE_FWD", {"mma", "wgmma"}, "wgmma where it runs (sm_90a build, sm_90, D 64/128)"},
    {"MOBA_FWD_PINGPONG", {"auto", "0", "1"},
     "auto (the sm_90a forwards' consumer warpgroups ping-pong their MMAs in the dense forward "
     "and in the MoBA forward at D 128; 0: nowhere, 1: everywhere)"},
    {"MOBA_DENSE_BWD", {"mma", "wgmma"}, "wgmma where it runs (sm_90a build, sm_90, D 64/128)"},
    {"MOBA_MOBA_FWD", {"mma", "wgmma"}, "wgmma where it runs and S is a multiple of 128"},
    {"MOBA_MOBA_FWD_GRID", {"persistent", "tiles"},
     "persistent (sm_90a MoBA forward: one CTA per SM over the tiles; a number n: n CTAs)", true},
    {"MOBA_FWD_CHUNK_TOKENS", {"0"},
     "0, the MoBA forward in one pass (n: in chunks of n query tokens)", true},
    {"MOBA_MOBA_BWD", {"mma", "wgmma"}, "wgmma where it runs"},
    {"MOBA_MOBA_BWD_DQ", {"red", "bulk"},
     "red (the sm_90a MoBA backward adds gathered dQ rows with red.global.add.v2.f32; bulk: "
     "staged, then the bulk reduce by rows, measured 10-15% slower)"},
    {"MOBA_GATE_ROWS", {"auto", "128", "256"},
     "auto (256 query tokens a gate CTA, two m-tiles per warp, where K <= 5 and the 128-row "
     "grid has >= 4096 CTAs; else 128)"},
    {"MOBA_INDEX_PIECE_TOKENS", {"auto", "2048", "256", "512", "1024"},
     "auto (the single pass's gather index on pieces sized to the launch: fewer tokens per "
     "count / fill CTA where the launch is small)"},
    {"MOBA_GATHER_BINS", {"smem", "global"},
     "smem, the gather index's counts in shared memory where the full blocks fit (global: "
     "global atomics, a test knob)"},
    {"MOBA_RMSNORM_BWD", {"fused", "split"}, "fused"},
};

void print_switches() {
  std::printf("kernel switches%s:\n",
              built_with_cuda() ? "" : " (no effect: this build has no CUDA kernels)");
  for (const KernelSwitch& s : kSwitches) {
    const char* v = std::getenv(s.name);
    if (v == nullptr || *v == '\0') {
      std::printf("  %s: unset (default: %s)\n", s.name, s.default_meaning);
      continue;
    }
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    const bool count = s.count_ok && end != v && *end == '\0' && n > 0;
    const auto accepted = s.accepted();
    const bool listed = std::any_of(accepted.begin(), accepted.end(),
                                    [&](const char* a) { return std::strcmp(a, v) == 0; });
    if (listed || count)
      std::printf("  %s=%s\n", s.name, v);
    else
      std::printf("  %s=%s (invalid: expected %s%s; the kernels stop with an error)\n", s.name, v,
                  choice_list(accepted).c_str(), s.count_ok ? " or a positive whole number" : "");
  }
}

}  // namespace

void add_info(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "info", "Print the build configuration, CUDA devices and the MOBA_* kernel switches");
  cmd->callback([] {
    std::printf("moba %s\ncompiler: %s\nCUDA kernels: %s\n", version().c_str(),
                compiler().c_str(), built_with_cuda() ? "compiled" : "not compiled");
    std::string why;
    const auto devices = cuda_devices(&why);
    if (devices.empty()) std::printf("CUDA devices: none (%s)\n", why.c_str());
    for (const CudaDevice& d : devices)
      std::printf("CUDA device %d: %s, sm_%d%d, %d SMs, %.1f GiB\n", d.index, d.name.c_str(),
                  d.compute_major, d.compute_minor, d.multiprocessors,
                  static_cast<double>(d.memory_bytes) / (1024.0 * 1024.0 * 1024.0));
    print_switches();
  });
}

}  // namespace moba::cli
