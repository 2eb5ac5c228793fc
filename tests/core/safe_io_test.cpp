// Paths from files stay in their folder, reads take regular files only (a FIFO is refused
// at once, never waited on), temporaries are created exclusively (a planted link is not
// followed), and a failed write names the file and the OS error (issue 15, findings 7, 8).
#include "core/safe_io.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>

#include "core/error.h"

namespace moba {
namespace {

namespace fs = std::filesystem;

struct Tmp {
  fs::path dir = fs::temp_directory_path() /
                 ("moba-safe-io-" + std::string(::testing::UnitTest::GetInstance()
                                                    ->current_test_info()->name()) +
                  "-" + std::to_string(::getpid()));
  Tmp() { fs::remove_all(dir), fs::create_directories(dir); }
  ~Tmp() { fs::remove_all(dir); }
};

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(ConfinedPath, NamesInsideTheFolderOnly) {
  EXPECT_EQ(confined_path("d", "train-00000.bin", "m"), "d/train-00000.bin");
  EXPECT_EQ(confined_path("d", "sub/x.bin", "m"), "d/sub/x.bin");
  EXPECT_NE(message_of([] { confined_path("d", "../x", "d/manifest.json"); })
                .find("d/manifest.json: file name '../x' leaves its folder"),
            std::string::npos);
  EXPECT_NE(message_of([] { confined_path("d", "a/../../x", "m"); }).find("leaves its folder"),
            std::string::npos);
  EXPECT_NE(message_of([] { confined_path("d", "/etc/shadow", "m"); })
                .find("'/etc/shadow' must be a name relative to its folder"),
            std::string::npos);
  EXPECT_NE(message_of([] { confined_path("d", "", "m"); }), "");
}

TEST(ReadRegularFile, RefusesAFifoWithoutBlockingAndAFolder) {
  Tmp t;
  const std::string fifo = (t.dir / "index.idx").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Before the fix the reader blocked forever on a FIFO without a writer.
  EXPECT_NE(message_of([&] { read_regular_file(fifo, "document index"); })
                .find("document index must be a regular file, this is a FIFO"),
            std::string::npos);
  EXPECT_NE(message_of([&] { read_regular_file(t.dir.string(), "config file"); })
                .find("config file must be a regular file, this is a folder"),
            std::string::npos);
  EXPECT_NE(message_of([&] { require_regular_file(fifo, "shard"); }).find("a FIFO"),
            std::string::npos);
  std::ofstream(t.dir / "a.txt") << "hello";
  EXPECT_EQ(read_regular_file((t.dir / "a.txt").string(), "x"), "hello");
}

TEST(WriteFileAtomic, APlantedLinkAtTheTemporaryIsNotFollowed) {
  Tmp t;
  const fs::path victim = t.dir / "victim";
  std::ofstream(victim) << "precious";
  fs::create_symlink(victim, t.dir / "run.json.tmp");
  write_file_atomic((t.dir / "run.json").string(), "{}\n");
  EXPECT_EQ(slurp(victim), "precious");
  EXPECT_EQ(slurp(t.dir / "run.json"), "{}\n");
  EXPECT_FALSE(fs::exists(t.dir / "run.json.tmp"));
  EXPECT_FALSE(fs::is_symlink(t.dir / "run.json"));
}

// A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) is a full disk for one process: the
// write fails with EFBIG. In a child, so that the limit does not touch the test runner.
TEST(NewFile, AFailedWriteNamesTheFileAndTheOsErrorAndLeavesNothing) {
  Tmp t;
  const std::string path = (t.dir / "model.safetensors").string();
  const std::string msg_path = (t.dir / "message").string();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    ::getrlimit(RLIMIT_FSIZE, &old);
    const std::string msg = message_of([&] {
      rlimit r{4096, old.rlim_max};  // the soft limit only, so that it can be lifted again
      ::setrlimit(RLIMIT_FSIZE, &r);
      NewFile f(path);
      const std::string big(10000, 'x');
      f.write(big.data(), big.size());
      f.close();
    });
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::ofstream(msg_path) << msg;
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string msg = slurp(msg_path);
  EXPECT_NE(msg.find("writing '" + path + "' failed: File too large"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(path)) << "a partial temporary was left";
}

}  // namespace
}  // namespace moba
