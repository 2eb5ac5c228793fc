// `moba train --gpus N`: one process per GPU, started and watched by this launcher
// (docs/distributed.md). Each rank is the same command without --gpus, with torchrun's
// variables in its environment:
//
//   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE   (one host: RANK = LOCAL_RANK = the GPU)
//   MOBA_NCCL_ID_FILE   where rank 0 publishes NCCL's unique id and the others read it
//   NCCL_NVLS_ENABLE=0  never NVLink multicast (NVLS), whatever the caller's environment says
//
// The launcher waits for every rank (waitpid). The first rank to fail (a non-zero exit, a
// signal) fails the job: the others get `grace` to exit on their own, then SIGTERM, then
// SIGKILL, and launch() throws moba::Error naming the rank. A rank that exits with
// kExitCollectiveTimeout timed out waiting for the others in a collective: it is not the
// culprit; the ranks still running when the grace ends are (they hang), and are named so.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace moba::cli {

// The exit code of a rank whose collective timed out waiting for the others
// (dist::CollectiveTimeout); `moba` exits with it, the launcher reads it.
inline constexpr int kExitCollectiveTimeout = 4;
inline constexpr const char* kIdFileEnv = "MOBA_NCCL_ID_FILE";

// A fresh folder under the system's temp folder (`<prefix>-XXXXXX`), removed with this
// object; `purpose` names it in the error if it cannot be made.
class TempFolder {
 public:
  TempFolder(const std::string& prefix, const std::string& purpose);
  ~TempFolder();
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct LaunchOptions {
  int ranks = 1;                     // processes, one per GPU (>= 1)
  std::vector<std::string> command;  // every rank's argv; command[0] the program (a path)
  // The folder of the NCCL id file; empty: a fresh folder under the system's temp folder,
  // removed at the end.
  std::string id_dir;
  // After the first failure: how long the other ranks may take to exit on their own (the
  // ranks waiting in a collective time out and report it) before they are stopped.
  std::chrono::milliseconds grace{std::chrono::seconds(30)};
  // Between SIGTERM and SIGKILL.
  std::chrono::milliseconds kill_grace{std::chrono::seconds(5)};
  std::FILE* log = stderr;  // one line at the start, and what happened on failure
  // The ranks' stdout goes to the launcher's stderr (`moba sweep --gpus`: rank 0's closing
  // "finished" line joins its progress there, and stdout keeps only the sweep's summary).
  bool stdout_to_stderr = false;
};

// Starts the ranks and returns once every one exited 0; otherwise stops them all and throws
// moba::Error naming the rank that failed or hung (see above).
void launch(const LaunchOptions& options);

// What a rank reads from the environment the launcher made; nullopt when the process was
// not started by it (no MOBA_NCCL_ID_FILE). Inconsistent values are moba::Error.
struct RankEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string id_file;
};
std::optional<RankEnv> rank_env();

// Rank 0 publishes `bytes` at `path` atomically (a temporary, then a rename); the others
// wait for the file (polling, up to `timeout`, moba::Error naming the path after it) and
// read exactly `size` bytes.
void publish_id(const std::string& path, std::span<const char> bytes);
std::vector<char> wait_for_id(const std::string& path, size_t size,
                              std::chrono::milliseconds timeout);

// The command line this process was started with (main() records it), and the same
// without an option and its value ("--gpus 2", "--gpus=2"): a rank's command.
void remember_args(int argc, char** argv);
const std::vector<std::string>& process_args();
std::vector<std::string> without_option(const std::vector<std::string>& args,
                                        const std::string& option);
// This executable's path (/proc/self/exe), for the ranks' command[0].
std::string self_executable();

}  // namespace moba::cli
