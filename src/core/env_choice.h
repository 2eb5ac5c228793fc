// A kernel switch read from the environment on every call (tests switch kernels within one
// process; `moba info` lists them): the index in `values` of the variable's value, 0 (the
// default, values[0]) when it is unset or empty; any other value is a moba::Error naming
// it and the accepted ones, "MOBA_GATE_ROWS=512: expected 128 or 256".
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>

#include "core/error.h"

namespace moba {

// "a, b or c": the accepted values as env_choice's errors (and `moba info`) name them.
inline std::string choice_list(std::span<const char* const> values) {
  std::string list;
  for (size_t i = 0; i < values.size(); ++i) {
    list += i == 0 ? "" : (i + 1 == values.size() ? " or " : ", ");
    list += values[i];
  }
  return list;
}

inline size_t env_choice(const char* var, std::initializer_list<const char*> values) {
  const char* e = std::getenv(var);
  if (e == nullptr || *e == '\0') return 0;
  size_t i = 0;
  for (const char* v : values) {
    if (std::strcmp(e, v) == 0) return i;
    ++i;
  }
  ::moba::detail::fail(__FILE__, __LINE__, var, "=", e, ": expected ",
                       choice_list({values.begin(), values.size()}));
}

}  // namespace moba
