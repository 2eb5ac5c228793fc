// Each command lives in its own cmd_*.cpp and adds itself to the app here. A command is
// listed only once it works.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
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

// The options every benchmark ends with: timed repeats (the median is reported), the seed of
// its random inputs, and -o/--out for the results as JSON.
template <typename Repeats>
void add_bench_run_options(CLI::App* cmd, Repeats& repeats, const std::string& repeats_help,
                           uint64_t& seed, const std::string& seed_help, std::string& json_path) {
  cmd->add_option("--repeats", repeats, repeats_help)->capture_default_str();
  cmd->add_option("--seed", seed, seed_help)->capture_default_str();
  cmd->add_option("--out,-o", json_path, "Also write the results as JSON to this file");
}

// The MoBA attention shape of the attention benchmarks (bench attention, bench decode):
// query heads, head dim, block size, top-k (key/value heads differ: one value or a list).
inline void add_moba_shape_options(CLI::App* cmd, int64_t& heads, int64_t& head_dim,
                                   const std::string& head_dim_help, int64_t& block_size,
                                   int64_t& top_k) {
  cmd->add_option("--heads", heads, "Query heads Hq")->capture_default_str();
  cmd->add_option("--head-dim,-D", head_dim, head_dim_help)->capture_default_str();
  cmd->add_option("--block-size,-S", block_size, "MoBA block size S")->capture_default_str();
  cmd->add_option("--top-k,-K", top_k, "MoBA top-k K (current block included)")
      ->capture_default_str();
}

}  // namespace moba::cli
