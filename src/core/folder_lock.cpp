#include "core/folder_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"

namespace moba {

FolderLock::FolderLock(const std::string& lock_file, const std::string& what) {
  // O_NOFOLLOW: a symbolic link planted at the lock's name is refused, not followed.
  fd_ = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  MOBA_CHECK(fd_ >= 0, "cannot open the lock file '", lock_file, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    MOBA_CHECK(false, "the lock file '", lock_file, "' is not a regular file");
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "unknown";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    ::close(fd_);
    fd_ = -1;
    MOBA_CHECK(err != EWOULDBLOCK, "'", what, "' is in use by another moba command (pid ", holder,
               "); wait for it to end or stop it");
    MOBA_CHECK(false, "cannot lock '", lock_file, "': ", std::strerror(err));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the lock; the file stays (harmless, reused)
}

}  // namespace moba
