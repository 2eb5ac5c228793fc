// moba info: version, build configuration and visible CUDA devices.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/build_info.h"

namespace moba::cli {

void add_info(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("info", "Print the build configuration and CUDA devices");
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
  });
}

}  // namespace moba::cli
