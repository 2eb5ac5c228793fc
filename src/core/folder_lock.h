// An exclusive lock on a folder for the whole life of a command: two `moba train` on one run
// folder, or two `moba prepare` into one data folder, would interleave their writes. The
// lock is flock(2) on a file, so the kernel drops it when the process dies (kill -9
// included): there is no stale lock to clean up.
#pragma once

#include <string>

#include "core/noncopyable.h"

namespace moba {

class FolderLock : NonCopyable {
 public:
  // Locks `lock_file` (created if needed; its folder must exist), writing our pid into it.
  // Throws moba::Error "'<what>' is in use by another moba command (pid N) ..." when another
  // process holds it. `what` names the folder in the message.
  FolderLock(const std::string& lock_file, const std::string& what);
  ~FolderLock();

 private:
  int fd_ = -1;
};

}  // namespace moba
