// Shared by the two halves of libmoba_ops.so (CPU and CUDA): the exception barrier of the
// C ABI and the layout built from a host cu_seqlens array.
#pragma once

#include <cstdint>
#include <exception>
#include <string>

#include "attention/layout.h"
#include "pyops/moba_ops.h"

namespace moba::pyops {

void set_error(std::string msg);
// The error code of a caught exception (its message stored for moba_ops_last_error).
int guard_failed(const std::exception_ptr& e);

// Runs f(); MOBA_OPS_OK, or the code and message of whatever it threw.
template <typename F>
int guard(F&& f) noexcept {
  try {
    f();
    return MOBA_OPS_OK;
  } catch (...) {
    return guard_failed(std::current_exception());
  }
}

// Layout of B sequences with host offsets cu[0..B] (validated: throws moba::Error).
attn::Layout layout_of(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D);

}  // namespace moba::pyops
