#include "core/build_info.h"

namespace moba {

std::string version() { return MOBA_VERSION; }

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "g++ " __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace moba
