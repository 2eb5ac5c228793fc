// The CPU engine (float or double), behind make_engine (engine.h).
#pragma once

#include <memory>
#include <span>

#include "infer/engine.h"

namespace moba::infer {

// opt.device is "cpu" (float32) or "cpu64" (float64); params float32, converted once.
std::unique_ptr<Engine> make_cpu_engine(const model::ModelConfig& cfg,
                                        std::span<const float> params, const EngineOptions& opt);

}  // namespace moba::infer
