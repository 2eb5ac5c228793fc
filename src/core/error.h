// Errors raised at the API edge. Every check names the argument and the values that
// broke it, so that a user reading the message knows what to change.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moba {

// The one exception type of the library; the CLI prints what() and exits with code 2.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
[[noreturn]] void fail(const char* file, int line, Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  (void)file;
  (void)line;
  throw Error(os.str());
}
}  // namespace detail

}  // namespace moba

// MOBA_CHECK(cond, parts...): throws moba::Error whose message is the parts streamed
// one after another, e.g. MOBA_CHECK(S >= 1, "block size S must be >= 1, got ", S).
#define MOBA_CHECK(cond, ...)                                   \
  do {                                                          \
    if (!(cond)) ::moba::detail::fail(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
