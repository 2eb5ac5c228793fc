// A base for classes that own something a copy would own twice (a file being written, a
// lock, a device buffer): copying is deleted, the derived class says so in its first line.
#pragma once

namespace moba {

class NonCopyable {
 public:
  NonCopyable(const NonCopyable&) = delete;
  NonCopyable& operator=(const NonCopyable&) = delete;

 protected:
  NonCopyable() = default;
  ~NonCopyable() = default;
};

}  // namespace moba
