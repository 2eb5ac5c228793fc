// A stand-in rank for tests/cli/launcher_test.cpp: started by the launcher, it records what
// it sees and then behaves as told.
//
//   launcher_child OUT_DIR MODE [RANK]
//
// Every rank writes OUT_DIR/rank<R>.env: its RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// NCCL_NVLS_ENABLE and MOBA_NCCL_ID_FILE, and the id it got through the file (rank 0 makes
// one, the others read it, as `moba train` does with NCCL's). Then, by MODE:
//   ok      exit 0
//   speak   print "rank R on stdout" on stdout and "rank R on stderr" on stderr, exit 0
//   fail    rank RANK prints an error and exits 2; the others wait (as in a collective) for
//           a minute, until the launcher stops them
//   crash   rank RANK aborts (SIGABRT); the others wait as above
//   hang    rank RANK sleeps forever; the others wait 0.3 s, then exit 4 (a collective's
//           timeout, cli::kExitCollectiveTimeout)
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/launcher.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: launcher_child OUT_DIR MODE [RANK]\n");
    return 64;
  }
  const std::string out = argv[1], mode = argv[2];
  const int target = argc > 3 ? std::atoi(argv[3]) : -1;
  try {
    const auto env = moba::cli::rank_env();
    if (!env) {
      std::fprintf(stderr, "launcher_child: not started by the launcher\n");
      return 65;
    }
    std::string id;
    if (env->rank == 0) {
      id = "id-of-" + std::to_string(::getpid());
      id.resize(32, '.');
      moba::cli::publish_id(env->id_file, std::vector<char>(id.begin(), id.end()));
    } else {
      const std::vector<char> got =
          moba::cli::wait_for_id(env->id_file, 32, std::chrono::seconds(20));
      id.assign(got.begin(), got.end());
    }
    std::ofstream f(out + "/rank" + std::to_string(env->rank) + ".env");
    for (const char* key : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                            "NCCL_NVLS_ENABLE", "MOBA_NCCL_ID_FILE"}) {
      const char* v = std::getenv(key);
      f << key << '=' << (v ? v : "<unset>") << '\n';
    }
    f << "ID=" << id << '\n';
    f.close();
    const bool me = env->rank == target;
    if (mode == "ok") return 0;
    if (mode == "speak") {
      std::printf("rank %d on stdout\n", env->rank);
      std::fprintf(stderr, "rank %d on stderr\n", env->rank);
      return 0;
    }
    if (mode == "fail" || mode == "crash") {
      if (!me) {
        std::this_thread::sleep_for(std::chrono::minutes(1));
        return 0;
      }
      std::fprintf(stderr, "launcher_child: rank %d fails on purpose\n", env->rank);
      if (mode == "crash") std::abort();
      return 2;
    }
    if (mode == "hang") {
      if (me)
        for (;;) ::pause();
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      std::fprintf(stderr, "launcher_child: rank %d timed out waiting for the others\n",
                   env->rank);
      return moba::cli::kExitCollectiveTimeout;
    }
    std::fprintf(stderr, "launcher_child: unknown mode '%s'\n", mode.c_str());
    return 64;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "launcher_child: %s\n", e.what());
    return 2;
  }
}
