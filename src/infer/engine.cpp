#include "infer/engine.h"

#include "core/error.h"
#include "infer/engine_cpu.h"

namespace moba::infer {

#ifdef MOBA_WITH_CUDA
// engine_cuda.cpp (CUDA builds only).
std::unique_ptr<Engine> make_cuda_engine(const model::ModelConfig& cfg,
                                         std::span<const float> params, const EngineOptions& opt);
#endif

std::unique_ptr<Engine> make_engine(const model::ModelConfig& cfg, std::span<const float> params,
                                    const EngineOptions& opt) {
  if (opt.device == "cpu" || opt.device == "cpu64") return make_cpu_engine(cfg, params, opt);
  if (opt.device == "cuda") {
#ifdef MOBA_WITH_CUDA
    return make_cuda_engine(cfg, params, opt);
#else
    MOBA_CHECK(false, "device 'cuda': this build has no CUDA (configure with -DMOBA_CUDA=ON "
               "on a machine with nvcc); use the cpu device");
#endif
  }
  MOBA_CHECK(false, "unknown inference device '", opt.device, "' (cpu, cpu64 or cuda)");
  return nullptr;  // not reached
}

}  // namespace moba::infer
