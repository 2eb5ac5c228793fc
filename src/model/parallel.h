// When a loop is worth OpenMP threads. A parallel region costs a few microseconds of
// wake-up and barrier, more when the machine is busy (idle threads spin, then sleep);
// tiny models run thousands of loops of a few thousand elements per step, so loops
// below this much work stay on one thread.
#pragma once

#include <cstdint>

namespace moba::model {

constexpr int64_t kParallelMinWork = int64_t{1} << 16;  // elements (or multiply-adds / 16)

}  // namespace moba::model
