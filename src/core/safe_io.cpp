#include "core/safe_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace moba {
namespace fs = std::filesystem;

std::string confined_path(const std::string& folder, const std::string& name,
                          const std::string& source) {
  const fs::path p(name);
  MOBA_CHECK(!name.empty() && !p.is_absolute(), source, ": file name '", name,
             "' must be a name relative to its folder '", folder, "'");
  for (const fs::path& part : p)
    MOBA_CHECK(part != "..", source, ": file name '", name, "' leaves its folder '", folder,
               "' ('..' is not allowed)");
  return (fs::path(folder) / p).string();
}

namespace {

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a folder";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

}  // namespace

void require_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  MOBA_CHECK(::stat(path.c_str(), &st) == 0, path, ": cannot open ", what, " (",
             std::strerror(errno), ")");
  MOBA_CHECK(S_ISREG(st.st_mode), path, ": ", what, " must be a regular file, this is ",
             kind_of(st.st_mode));
}

std::string read_regular_file(const std::string& path, const std::string& what) {
  // O_NONBLOCK: opening a FIFO without a writer must not block before fstat can refuse it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  MOBA_CHECK(fd >= 0, path, ": cannot open ", what, " (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MOBA_CHECK(false, path, ": ", what, " must be a regular file, this is ", kind_of(st.st_mode));
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      MOBA_CHECK(false, path, ": reading ", what, " failed (", std::strerror(err), ")");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

NewFile::NewFile(const std::string& path) : path_(path) {
  // A leftover of a crash, or a link someone planted, is unlinked (the link itself, not its
  // target); O_EXCL|O_NOFOLLOW then fails rather than follow anything created meanwhile.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) ::unlink(path.c_str());
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  MOBA_CHECK(fd_ >= 0, "cannot create '", path, "': ", std::strerror(errno));
}

NewFile::~NewFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!done_) ::unlink(path_.c_str());  // never leave a partial temporary behind
}

void NewFile::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    MOBA_CHECK(w > 0, "writing '", path_, "' failed: ", std::strerror(w < 0 ? errno : ENOSPC));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void NewFile::close() {
  const bool synced = ::fsync(fd_) == 0;
  const int err = errno;
  const bool closed = ::close(fd_) == 0;
  fd_ = -1;
  MOBA_CHECK(synced && closed, "writing '", path_, "' failed: ",
             std::strerror(synced ? errno : err));
  done_ = true;
}

void write_new_file(const std::string& path, const void* data, size_t n) {
  NewFile f(path);
  f.write(data, n);
  f.close();
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  write_new_file(tmp, text.data(), text.size());
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    MOBA_CHECK(false, "renaming '", tmp, "' to '", path, "' failed: ", std::strerror(err));
  }
}

}  // namespace moba
