// File access for paths that come from files or users: a manifest's shard name, a run's
// config, a temporary beside a file we replace. Three rules, each a reproduced problem
// (issue 15, finding 7):
//   - a name read from a file stays inside its folder ("../x" or "/etc/shadow" is refused);
//   - reads open regular files only (a FIFO would block the reader forever, a folder reads
//     as empty), checked on the open descriptor, opened O_NONBLOCK so the check comes first;
//   - temporaries are created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW): a symbolic link
//     planted at RUN/run.json.tmp is removed, never followed.
// Every error names the file and carries the OS's reason (strerror), so "disk full" or
// "File too large" reaches the user (finding 8).
#pragma once

#include <cstddef>
#include <string>

#include "core/noncopyable.h"

namespace moba {

// `folder / name` where `name` was read from a file in `folder`: refuses an empty name, an
// absolute one and any ".." component. `source` names the file the name came from.
std::string confined_path(const std::string& folder, const std::string& name,
                          const std::string& source);

// Throws moba::Error unless `path` is a regular file (after following links). `what`
// describes the file in the message ("manifest", "document index", ...).
void require_regular_file(const std::string& path, const std::string& what);

// The whole content of a regular file; refuses FIFOs, devices and folders without blocking.
std::string read_regular_file(const std::string& path, const std::string& what);

// Creates `path` exclusively (a stale file or link of that name is unlinked first, never
// followed), writes `n` bytes, fsyncs and closes. On any failure the partial file is
// removed and moba::Error names it with the OS error.
void write_new_file(const std::string& path, const void* data, size_t n);

// Replaces `path` atomically: write_new_file(path + ".tmp"), then rename over `path`.
void write_file_atomic(const std::string& path, const std::string& text);

// A file being written exclusively (see write_new_file); removed by the destructor unless
// close() succeeded. For writers that stream (safetensors, shards).
class NewFile : NonCopyable {
 public:
  explicit NewFile(const std::string& path);
  ~NewFile();
  void write(const void* data, size_t n);
  void close();  // fsync + close; throws with the OS error
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  bool done_ = false;
};

}  // namespace moba
