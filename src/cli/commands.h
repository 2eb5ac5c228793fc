// Each command lives in its own cmd_*.cpp and adds itself to the app here. A command is
// listed only once it works.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "scaling/curves.h"

namespace moba::cli {

void add_info(CLI::App& app);   // moba info
void add_bench(CLI::App& app);  // moba bench attention, moba bench train
void add_bench_train(CLI::App* bench);  // moba bench train (cmd_bench_train.cpp)
void add_prepare(CLI::App& app);  // moba prepare
void add_fit(CLI::App& app);     // moba fit
void add_plot(CLI::App& app);    // moba plot (only in builds with cairo)
void add_report(CLI::App& app);  // moba report

// --compute of the scaling commands: "6nd", "exec" or "both".
std::vector<scaling::Compute> parse_computes(const std::string& s);
void add_train(CLI::App& app);  // moba train
void add_sweep(CLI::App& app);  // moba sweep
void add_eval(CLI::App& app);   // moba eval
void add_export_hf(CLI::App& app);  // moba export-hf (cmd_export_hf.cpp)
void add_import_hf(CLI::App& app);  // moba import-hf (cmd_export_hf.cpp)
void add_logits(CLI::App& app);     // moba logits

}  // namespace moba::cli
