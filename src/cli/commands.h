// Each command lives in its own cmd_*.cpp and adds itself to the app here. A command is
// listed only once it works.
#pragma once

#include <CLI/CLI.hpp>

namespace moba::cli {

void add_info(CLI::App& app);   // moba info
void add_bench(CLI::App& app);  // moba bench attention
void add_train(CLI::App& app);  // moba train

}  // namespace moba::cli
