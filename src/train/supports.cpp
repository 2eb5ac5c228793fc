#include "train/supports.h"

#include "core/error.h"
#include "train/memory.h"

namespace moba::train {

std::string Support::text() const {
  std::string s;
  for (const std::string& r : reasons) s += (s.empty() ? "" : "; ") + r;
  return s;
}

Support supports(const RunConfig& cfg, const std::string& device) {
  MOBA_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '", device,
             "'");
  Support s;
  if (device == "cuda") s.reasons = model::cuda_kernel_limits(cfg.model);
  const std::string memory =
      memory_problem(cfg.model, cfg.train.batch_size, cfg.train.grad_accum, device);
  if (!memory.empty()) s.reasons.push_back(memory);
  return s;
}

void check_supported(const RunConfig& cfg, const std::string& device) {
  const Support s = supports(cfg, device);
  MOBA_CHECK(s.ok(), "'", cfg.name, "' cannot train on ", device, ": ", s.text());
}

}  // namespace moba::train
