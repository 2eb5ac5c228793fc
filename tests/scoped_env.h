// An environment variable set for a scope: the previous value (or its absence) comes back
// when the scope ends, also when an assertion or an exception leaves it. For the tests of
// the knobs the library reads on every call (MOBA_FWD_CHUNK_TOKENS, MOBA_MOBA_FWD, ...).
#pragma once

#include <cstdlib>
#include <string>

namespace moba::test {

struct ScopedEnv {
  const char* name;
  bool had;
  std::string saved;
  // value null: the variable is unset for the scope.
  ScopedEnv(const char* n, const char* value) : name(n) {
    const char* prev = std::getenv(n);
    had = prev != nullptr;
    saved = prev ? prev : "";
    if (value) setenv(n, value, 1);
    else unsetenv(n);
  }
  ~ScopedEnv() {
    if (had) setenv(name, saved.c_str(), 1);
    else unsetenv(name);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
};

}  // namespace moba::test
