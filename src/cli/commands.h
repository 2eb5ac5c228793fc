// Each command lives in its own cmd_*.cpp and adds itself to the app here. A command is
// listed only once it works.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "scaling/curves.h"

namespace moba::cli {

void add_info(CLI::App& app);   // moba info
void add_bench(CLI::App& app);  // moba bench attention, moba bench train
void add_bench_train(CLI::App* bench);  // moba bench train (cmd_bench_train.cpp)
void add_bench_infer(CLI::App* bench);  // moba bench infer (cmd_bench_infer.cpp)
void add_bench_decode(CLI::App* bench);  // moba bench decode (cmd_bench_decode.cpp, CUDA builds)
void add_prepare(CLI::App& app);  // moba prepare
void add_fit(CLI::App& app);     // moba fit
void add_plot(CLI::App& app);    // moba plot (only in builds with cairo)
void add_report(CLI::App& app);  // moba report

void add_train(CLI::App& app);  // moba train
void add_sweep(CLI::App& app);  // moba sweep
void add_eval(CLI::App& app);   // moba eval
void add_eval_passkey(CLI::App* eval);  // moba eval passkey (cmd_eval_passkey.cpp)
void add_export_hf(CLI::App& app);  // moba export-hf (cmd_export_hf.cpp)
void add_import_hf(CLI::App& app);  // moba import-hf (cmd_export_hf.cpp)
void add_logits(CLI::App& app);     // moba logits
void add_generate(CLI::App& app);   // moba generate (cmd_generate.cpp)

// An option's old spelling (--json, --runs-dir before -o/--out), kept so that scripts keep
// working: bound to the same variable, hidden from --help, and a note on stderr names the
// documented spelling when it is used.
template <typename T>
CLI::Option* add_old_spelling(CLI::App* cmd, const std::string& old_name, T& variable,
                              const std::string& new_name) {
  return cmd->add_option(old_name, variable)
      ->group("")
      ->each([old_name, new_name](const std::string&) {
        std::fprintf(stderr, "moba: note: %s is an old spelling of %s\n", old_name.c_str(),
                     new_name.c_str());
      });
}

// --device, the same option in every command: cpu or cuda (any other value is an argument
// error, exit 2, worded alike everywhere), cpu unless given; `help` says what each means
// for the command.
inline CLI::Option* add_device_option(CLI::App* cmd, std::string& device, const std::string& help) {
  return cmd->add_option("--device", device, help)
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

}  // namespace moba::cli
