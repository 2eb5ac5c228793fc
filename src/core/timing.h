// Wall-clock timing of the work itself (prepare's phases, training steps): a monotonic clock,
// so that a change of the system time cannot make a phase take negative or absurd seconds.
#pragma once

#include <chrono>

namespace moba {

using Clock = std::chrono::steady_clock;

// Seconds from t0 to now.
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace moba
