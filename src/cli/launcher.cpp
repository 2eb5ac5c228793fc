#include "cli/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <thread>

#include "core/error.h"

extern char** environ;

namespace moba::cli {
namespace fs = std::filesystem;

TempFolder::TempFolder(const std::string& prefix, const std::string& purpose) {
  std::string tmpl = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  MOBA_CHECK(::mkdtemp(tmpl.data()) != nullptr, "cannot create a folder under ",
             fs::temp_directory_path().string(), " for ", purpose, " (", std::strerror(errno),
             ")");
  path_ = tmpl;
}

TempFolder::~TempFolder() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPoll = std::chrono::milliseconds(20);

std::vector<std::string>& args_store() {
  static std::vector<std::string> args;
  return args;
}

// The launcher's environment with `set` replacing (or adding) its keys.
std::vector<std::string> child_environment(const std::vector<std::pair<std::string, std::string>>& set) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    const bool replaced =
        std::any_of(set.begin(), set.end(), [&](const auto& s) { return s.first == key; });
    if (!replaced) env.push_back(kv);
  }
  for (const auto& [k, v] : set) env.push_back(k + "=" + v);
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> p;
  for (std::string& s : strings) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

// The id file's folder: the one given, or a fresh one removed at the end.
class IdFolder {
 public:
  explicit IdFolder(const std::string& dir) {
    if (dir.empty()) {
      temp_.emplace("moba-launch", "NCCL's id");
      path_ = temp_->path();
    } else {
      path_ = dir;
      fs::create_directories(path_);
    }
  }
  const fs::path& path() const { return path_; }

 private:
  std::optional<TempFolder> temp_;
  fs::path path_;
};

struct Child {
  pid_t pid = -1;
  bool running = false;
  bool killed = false;  // stopped by the launcher
  int status = 0;       // waitpid's, once exited
  Clock::time_point exited;
};

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = strsignal(sig);
    return "signal " + std::to_string(sig) + (name ? std::string(" (") + name + ")" : "");
  }
  return "status " + std::to_string(status);
}

bool failed(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }
bool timed_out(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == kExitCollectiveTimeout;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

// Reaps the children that have exited; returns how many are still running.
int reap(std::vector<Child>& children) {
  int running = 0;
  for (Child& c : children) {
    if (!c.running) continue;
    int st = 0;
    const pid_t r = ::waitpid(c.pid, &st, WNOHANG);
    if (r == c.pid) {
      c.running = false;
      c.status = st;
      c.exited = Clock::now();
    } else if (r < 0 && errno == ECHILD) {  // not ours any more: count it gone
      c.running = false;
      c.status = 0;
      c.exited = Clock::now();
    } else {
      ++running;
    }
  }
  return running;
}

// SIGTERM to the children still running, SIGKILL after kill_grace; reaps them all.
void stop_all(std::vector<Child>& children, std::chrono::milliseconds kill_grace) {
  for (Child& c : children)
    if (c.running) {
      c.killed = true;
      ::kill(c.pid, SIGTERM);
    }
  const auto t0 = Clock::now();
  while (reap(children) > 0 && Clock::now() - t0 < kill_grace) std::this_thread::sleep_for(kPoll);
  for (Child& c : children)
    if (c.running) ::kill(c.pid, SIGKILL);
  while (reap(children) > 0) std::this_thread::sleep_for(kPoll);
}

}  // namespace

void launch(const LaunchOptions& o) {
  MOBA_CHECK(o.ranks >= 1, "--gpus must be >= 1, got ", o.ranks);
  MOBA_CHECK(!o.command.empty(), "launcher: no command to run");
  const IdFolder folder(o.id_dir);
  const std::string id_file = (folder.path() / "nccl_id").string();
  std::error_code ec;
  fs::remove(id_file, ec);  // a previous job's id would pair ranks with a dead root
  std::vector<std::string> argv_strings = o.command;
  std::vector<char*> argv = pointers(argv_strings);
  const std::string world = std::to_string(o.ranks);
  std::vector<Child> children(static_cast<size_t>(o.ranks));
  if (o.log)
    std::fprintf(o.log, "launcher: %d ranks of %s (NCCL id in %s)\n", o.ranks,
                 o.command[0].c_str(), id_file.c_str());
  for (int r = 0; r < o.ranks; ++r) {
    const std::string rank = std::to_string(r);
    std::vector<std::string> env_strings = child_environment({{"RANK", rank},
                                                              {"WORLD_SIZE", world},
                                                              {"LOCAL_RANK", rank},
                                                              {"LOCAL_WORLD_SIZE", world},
                                                              {kIdFileEnv, id_file},
                                                              {"NCCL_NVLS_ENABLE", "0"}});
    std::vector<char*> envp = pointers(env_strings);
    if (o.log) std::fflush(o.log);
    std::fflush(stdout);
    const pid_t pid = ::fork();
    if (pid < 0) {
      const std::string why = std::strerror(errno);
      stop_all(children, o.kill_grace);
      MOBA_CHECK(false, "launcher: cannot start rank ", r, " (fork: ", why, ")");
    }
    if (pid == 0) {
      if (o.stdout_to_stderr) ::dup2(2, 1);
      ::execve(argv[0], argv.data(), envp.data());
      // Only async-signal-safe calls between fork and exit.
      const char msg[] = "launcher: a rank could not be started (execve failed)\n";
      [[maybe_unused]] const ssize_t n = ::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
    children[static_cast<size_t>(r)].pid = pid;
    children[static_cast<size_t>(r)].running = true;
  }

  // Watch: until all exit, or the first failure's grace has passed.
  int first_failure = -1;
  Clock::time_point failed_at;
  for (;;) {
    const int running = reap(children);
    if (first_failure < 0) {
      // The earliest exit among the failed ones (several may be reaped in one pass).
      for (int r = 0; r < o.ranks; ++r) {
        const Child& c = children[static_cast<size_t>(r)];
        if (!c.running && failed(c.status) &&
            (first_failure < 0 || c.exited < children[static_cast<size_t>(first_failure)].exited))
          first_failure = r;
      }
      if (first_failure >= 0) failed_at = Clock::now();
    }
    if (running == 0) break;
    if (first_failure >= 0 && Clock::now() - failed_at >= o.grace) break;
    std::this_thread::sleep_for(kPoll);
  }
  if (first_failure < 0) return;  // every rank exited 0

  std::vector<int> still_running;
  for (int r = 0; r < o.ranks; ++r)
    if (children[static_cast<size_t>(r)].running) still_running.push_back(r);
  stop_all(children, o.kill_grace);

  // The culprit: the first rank that failed on its own account; else (every failed rank
  // timed out waiting in a collective) the ranks that never came, still running.
  std::vector<int> failed_ranks, waiting;
  int culprit = -1;
  for (int r = 0; r < o.ranks; ++r) {
    const Child& c = children[static_cast<size_t>(r)];
    if (c.killed || !failed(c.status)) continue;
    if (timed_out(c.status)) {
      waiting.push_back(r);
      continue;
    }
    failed_ranks.push_back(r);
    if (culprit < 0 || c.exited < children[static_cast<size_t>(culprit)].exited) culprit = r;
  }
  const double grace_s = std::chrono::duration<double>(o.grace).count();
  std::string msg;
  if (culprit >= 0) {
    msg = "rank " + std::to_string(culprit) + " of " + world + " failed (" +
          describe_status(children[static_cast<size_t>(culprit)].status) + ")";
    std::vector<int> others;
    for (int r : failed_ranks)
      if (r != culprit) others.push_back(r);
    if (!others.empty()) msg += "; rank(s) " + rank_list(others) + " failed too";
    if (!waiting.empty())
      msg += "; rank(s) " + rank_list(waiting) + " timed out waiting for the others";
  } else if (!still_running.empty()) {
    msg = "rank(s) " + rank_list(still_running) + " of " + world + " hung: rank(s) " +
          rank_list(waiting) + " timed out waiting for them in a collective, and they had not "
          "exited " + std::to_string(grace_s) + " s later";
  } else {
    msg = "rank(s) " + rank_list(waiting) + " of " + world +
          " timed out waiting for the others in a collective";
  }
  if (!still_running.empty())
    msg += "; stopped rank(s) " + rank_list(still_running) + " (SIGTERM, then SIGKILL)";
  throw Error("launcher: " + msg + ". The job stopped; each rank's own message is above");
}

std::optional<RankEnv> rank_env() {
  const char* id = std::getenv(kIdFileEnv);
  if (!id) return std::nullopt;
  auto integer = [](const char* name) {
    const char* v = std::getenv(name);
    MOBA_CHECK(v && *v, kIdFileEnv, " is set but ", name,
               " is not: a rank needs RANK, WORLD_SIZE and LOCAL_RANK (moba train --gpus sets them)");
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    MOBA_CHECK(*end == '\0' && x >= 0 && x < 1 << 20, name, "='", v,
               "' is not a non-negative integer");
    return static_cast<int>(x);
  };
  RankEnv e;
  e.id_file = id;
  e.rank = integer("RANK");
  e.world = integer("WORLD_SIZE");
  e.local_rank = integer("LOCAL_RANK");
  MOBA_CHECK(e.world >= 1 && e.rank < e.world, "RANK=", e.rank, " is outside WORLD_SIZE=",
             e.world);
  MOBA_CHECK(!e.id_file.empty(), kIdFileEnv, " is empty");
  return e;
}

void publish_id(const std::string& path, std::span<const char> bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    MOBA_CHECK(f.good(), "cannot write NCCL's id to '", tmp, "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  MOBA_CHECK(!ec, "cannot publish NCCL's id at '", path, "' (", ec.message(), ")");
}

std::vector<char> wait_for_id(const std::string& path, size_t size,
                              std::chrono::milliseconds timeout) {
  const auto t0 = Clock::now();
  for (;;) {
    std::error_code ec;
    if (fs::is_regular_file(path, ec) && fs::file_size(path, ec) == size && !ec) {
      std::ifstream f(path, std::ios::binary);
      std::vector<char> bytes(size);
      f.read(bytes.data(), static_cast<std::streamsize>(size));
      if (f.gcount() == static_cast<std::streamsize>(size)) return bytes;
    }
    MOBA_CHECK(Clock::now() - t0 < timeout, "rank 0 did not publish NCCL's id at '", path,
               "' within ", timeout.count(), " ms (did rank 0 start?)");
    std::this_thread::sleep_for(kPoll);
  }
}

void remember_args(int argc, char** argv) {
  args_store().assign(argv, argv + argc);
}
const std::vector<std::string>& process_args() { return args_store(); }

std::vector<std::string> without_option(const std::vector<std::string>& args,
                                        const std::string& option) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == option) {
      ++i;  // and its value
      continue;
    }
    if (args[i].rfind(option + "=", 0) == 0) continue;
    out.push_back(args[i]);
  }
  return out;
}

std::string self_executable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  MOBA_CHECK(!ec, "cannot find this executable's path (/proc/self/exe: ", ec.message(), ")");
  return p.string();
}

}  // namespace moba::cli
