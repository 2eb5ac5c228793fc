// moba bench train: times training steps of the decoder (forward, backward, gradient norm,
// AdamW: what `moba train` runs per step, without data loading or logging) on random
// tokens, for full attention and MoBA, and prints tokens/s and MFU as PEERS.md counts them.
// --peer takes bench/peer_train.py's JSON (PyTorch eager / torch.compile, timed in the same
// device call) and adds our ratio to it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/bench_model.h"
#include "cli/commands.h"
#include "cli/json_file.h"
#include "core/error.h"
#include "core/timing.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "train/adamw.h"
#ifdef MOBA_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.cuh"
#include "model/cuda/model_cuda.h"
#endif

namespace moba::cli {
namespace {

constexpr double kH100PeakFlops = 989e12;  // dense bf16, PEERS.md

struct BenchTrainOptions {
  std::string device = "cpu";  // as in every command
  std::vector<int64_t> seq_lens = {8192};
  std::vector<std::string> attention = {"full", "moba"};
  int64_t batch = 1;
  BenchModelShape m;  // the decoder
  bool profile = false;
  int steps = 20, warmup = 5;
  uint64_t seed = 1;
  std::string json_path, peer_path;
};

model::Batch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  model::Batch b;
  b.B = B;
  b.T = T;
  b.tokens.resize(static_cast<size_t>(B * (T + 1)));
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(V - 1));
  for (int32_t& t : b.tokens) t = dist(gen);
  return b;
}

struct Timing {
  double ms_per_step = 0, flops_exec_per_step = 0, loss = 0, memory_gb = 0;
  std::vector<std::pair<std::string, double>> profile;  // ms per step per category
  struct Op {
    std::string op, category;
    double ms = 0;      // per step, summed over layers
    double per_step = 0;  // launches per step
  };
  std::vector<Op> ops;  // the same per operation, largest first
};

Timing time_cpu(const BenchTrainOptions& o, const model::ModelConfig& c) {
  model::Model<float> m(c);
  std::vector<float> params(m.layout().total), grads(params.size());
  model::init_params<float>(m.layout(), o.seed, params);
  train::OptimConfig oc;
  train::AdamW adam(m.layout(), oc);
  const model::Batch batch = random_batch(o.batch, c.seq_len, c.vocab_size, o.seed);
  Timing t;
  double total_ms = 0;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    const auto t0 = Clock::now();
    std::fill(grads.begin(), grads.end(), 0.f);
    t.loss = m.forward(params, batch, true);
    m.backward(params, grads, 1.0);
    train::clip_grads(grads, train::grad_norm(grads), 1.0);
    adam.step(params, grads, 1e-4);
    if (s >= o.warmup)
      total_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    t.flops_exec_per_step = m.last_flops();
  }
  t.ms_per_step = total_ms / o.steps;
  return t;
}

#ifdef MOBA_WITH_CUDA
Timing time_cuda(const BenchTrainOptions& o, const model::ModelConfig& c) {
  model::cuda::ModelCuda m(c);
  {
    std::vector<float> params(m.layout().total);
    model::init_params<float>(m.layout(), o.seed, params);
    m.upload_params(params);
  }
  const model::Batch batch = random_batch(o.batch, c.seq_len, c.vocab_size, o.seed);
  Timing t;
  double total_ms = 0;
  int64_t step = 0;
  const int profiled = o.profile ? 3 : 0;
  for (int s = 0; s < o.warmup + o.steps + profiled; ++s) {
    if (profiled && s == o.warmup + o.steps) m.set_profiling(true);
    const auto t0 = Clock::now();
    // The trainer's step (train/trainer.cpp, gpu_train_step): zero, forward + backward,
    // loss to the host, gradient norm (waits), AdamW with the clipping factor fused.
    m.zero_grads();
    m.train_micro_batch(batch, true, 1.0);
    const std::vector<double> losses = m.take_losses();
    const double gnorm = m.grad_norm();
    MOBA_CHECK(std::isfinite(losses.at(0)) && std::isfinite(gnorm), "bench train: loss ",
               losses.at(0), ", gradient norm ", gnorm, " at warm-up/timed step ", s);
    m.adamw_step({++step, 1e-4, 0.9, 0.95, 1e-8, 0.1, train::clip_factor(gnorm, 1.0)});
    CUDA_CHECK(cudaDeviceSynchronize());
    if (s >= o.warmup && s < o.warmup + o.steps)
      total_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    t.loss = losses[0];
    t.flops_exec_per_step = m.last_flops();
  }
  t.ms_per_step = total_ms / o.steps;
  t.memory_gb = static_cast<double>(m.device_bytes()) / 1e9;
  if (profiled) {
    t.profile = m.take_profile();
    for (auto& [name, ms] : t.profile) ms /= profiled;
    for (const auto& op : m.take_op_profile())
      t.ops.push_back({op.op, op.category, op.ms / profiled,
                       static_cast<double>(op.count) / profiled});
  }
  return t;
}
#endif

// PEERS.md's MFU convention: 6 x matmul parameters + 6 L C T FLOPs per token.
double peers_flops_per_token(const model::ModelConfig& c) {
  return model::matmul_flops_per_token(c) +
         6.0 * static_cast<double>(c.layers * c.width * c.seq_len);
}

const nlohmann::json* find_peer(const nlohmann::json& peer, int64_t T, const char* mode) {
  if (!peer.is_array()) return nullptr;
  for (const nlohmann::json& r : peer)
    if (r.value("T", int64_t{0}) == T && r.value("mode", std::string()) == mode &&
        r.contains("tokens_per_s") && r["tokens_per_s"].is_number())
      return &r;
  return nullptr;
}

void run_bench_train(const BenchTrainOptions& o) {
  MOBA_CHECK(o.device == "cpu" || o.device == "cuda", "--device must be cpu or cuda");
#ifndef MOBA_WITH_CUDA
  MOBA_CHECK(o.device == "cpu", "--device cuda: this build has no CUDA kernels");
#endif
  MOBA_CHECK(o.steps >= 1 && o.warmup >= 0, "--steps must be >= 1 and --warmup >= 0");
  nlohmann::json peer;
  if (!o.peer_path.empty()) {
    std::ifstream f(o.peer_path);
    MOBA_CHECK(f.good(), "--peer: cannot read '", o.peer_path, "'");
    try {
      peer = nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      MOBA_CHECK(false, "--peer: '", o.peer_path, "' is not JSON: ", e.what());
    }
    if (peer.is_object() && peer.contains("records")) peer = peer["records"];
  }
  std::string device_name = "cpu";
#ifdef MOBA_WITH_CUDA
  if (o.device == "cuda") {
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    device_name = p.name;
  }
#endif
  std::printf("# moba bench train (%s): %lld layers, width %lld, %lld heads, batch %lld, "
              "vocab %lld, %s head; %d timed steps after %d warm-up\n\n",
              device_name.c_str(), static_cast<long long>(o.m.layers),
              static_cast<long long>(o.m.width), static_cast<long long>(o.m.heads),
              static_cast<long long>(o.batch), static_cast<long long>(o.m.vocab),
              o.m.tied ? "tied" : "untied", o.steps, o.warmup);
  std::printf("| T | attention | ms/step | tokens/s | MFU (PEERS) | MFU (executed) | memory GB | "
              "vs torch eager | vs torch.compile | vs our full |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::string> profile_lines, op_tables;
  for (int64_t T : o.seq_lens) {
    double full_tps = 0;
    for (const std::string& attn : o.attention) {
      MOBA_CHECK(attn == "full" || attn == "moba", "--attention takes full and/or moba, got '",
                 attn, "'");
      const model::ModelConfig c = o.m.config(T, attn);
      const auto t0 = Clock::now();
      std::fprintf(stderr, "bench train: T %lld, %s attention: %d warm-up + %d timed steps...\n",
                   static_cast<long long>(T), attn.c_str(), o.warmup, o.steps);
      std::fflush(stderr);
      Timing t;
#ifdef MOBA_WITH_CUDA
      t = o.device == "cuda" ? time_cuda(o, c) : time_cpu(o, c);
#else
      t = time_cpu(o, c);
#endif
      std::fprintf(stderr, "bench train: T %lld, %s attention done in %.1f s\n",
                   static_cast<long long>(T), attn.c_str(), seconds_since(t0));
      const double tokens = static_cast<double>(o.batch * T);
      const double tps = tokens / (t.ms_per_step * 1e-3);
      const double mfu_peers = peers_flops_per_token(c) * tps / kH100PeakFlops;
      const double mfu_exec = t.flops_exec_per_step / (t.ms_per_step * 1e-3) / kH100PeakFlops;
      if (attn == "full") full_tps = tps;
      nlohmann::json row = {{"T", T},
                            {"attention", attn},
                            {"ms_per_step", t.ms_per_step},
                            {"tokens_per_s", tps},
                            {"mfu_peers", mfu_peers},
                            {"mfu_executed", mfu_exec},
                            {"flops_exec_per_step", t.flops_exec_per_step},
                            {"memory_gb", t.memory_gb},
                            {"loss", t.loss},
                            {"params_non_embedding", model::param_counts(c).non_embedding}};
      auto ratio = [&](const char* mode) -> std::string {
        const nlohmann::json* p = find_peer(peer, T, mode);
        if (!p) return "-";
        const double r = tps / (*p)["tokens_per_s"].get<double>();
        row[std::string("vs_torch_") + mode] = r;
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.2fx", r);
        return buf;
      };
      const std::string eager = ratio("eager"), compiled = ratio("compile");
      char vs_full[32] = "-";
      if (attn == "moba" && full_tps > 0) {
        std::snprintf(vs_full, sizeof vs_full, "%.2fx", tps / full_tps);
        row["vs_our_full"] = tps / full_tps;
      }
      std::printf("| %lld | %s | %.1f | %.0f | %.1f%% | %.1f%% | %.2f | %s | %s | %s |\n",
                  static_cast<long long>(T), attn.c_str(), t.ms_per_step, tps, 100 * mfu_peers,
                  100 * mfu_exec, t.memory_gb, eager.c_str(), compiled.c_str(), vs_full);
      std::fflush(stdout);
      if (!t.profile.empty()) {
        nlohmann::json prof = nlohmann::json::object();
        std::string line;
        for (const auto& [name, ms] : t.profile) {
          prof[name] = ms;
          char buf[128];
          std::snprintf(buf, sizeof buf, "%s%s %.2f", line.empty() ? "" : ", ", name.c_str(), ms);
          line += buf;
        }
        row["profile_ms_per_step"] = prof;
        profile_lines.push_back("T " + std::to_string(T) + " " + attn + ": " + line);
        if (!t.ops.empty()) {
          nlohmann::json ops = nlohmann::json::array();
          std::string table = "\nT " + std::to_string(T) + " " + attn +
                              ", ms per step by operation (summed over layers):\n\n"
                              "| operation | category | ms | share | launches per step |\n"
                              "|---|---|---|---|---|\n";
          double total = 0;
          for (const auto& op : t.ops) total += op.ms;
          for (const auto& op : t.ops) {
            ops.push_back({{"op", op.op}, {"category", op.category}, {"ms", op.ms},
                           {"launches_per_step", op.per_step}});
            char buf[256];
            std::snprintf(buf, sizeof buf, "| %s | %s | %.3f | %.1f%% | %.0f |\n", op.op.c_str(),
                          op.category.c_str(), op.ms, total > 0 ? 100 * op.ms / total : 0.0,
                          op.per_step);
            table += buf;
          }
          row["profile_ops"] = ops;
          op_tables.push_back(table);
        }
      }
      rows.push_back(row);
    }
  }
  if (!profile_lines.empty()) {
    std::printf("\nms per step by category (%s; events after every operation):\n",
                "3 profiled steps after the timed ones");
    for (const std::string& l : profile_lines) std::printf("- %s\n", l.c_str());
    for (const std::string& t : op_tables) std::printf("%s", t.c_str());
  }
  if (!o.json_path.empty()) {
    nlohmann::json j = o.m.json();  // the shape's keys at the top level, as before
    j.update(nlohmann::json{{"device", device_name}, {"batch", o.batch}, {"steps", o.steps},
                            {"warmup", o.warmup}, {"rows", rows}});
    write_json_file(o.json_path, j);
  }
}

}  // namespace

void add_bench_train(CLI::App* bench) {
  static BenchTrainOptions o;
  CLI::App* cmd = bench->add_subcommand(
      "train", "Time training steps (fwd, bwd, grad norm, AdamW) on random tokens: tokens/s, MFU");
  add_device_option(cmd, o.device,
                    "cpu (float32) or cuda (bf16 mixed precision); cpu unless given, as in "
                    "every command");
  cmd->add_option("--seq-len,-T", o.seq_lens, "Context lengths T")->capture_default_str();
  cmd->add_option("--attention", o.attention, "full and/or moba")->capture_default_str();
  cmd->add_option("--batch,-B", o.batch, "Rows per step")->capture_default_str();
  o.m.add_options(cmd);
  cmd->add_flag("--profile", o.profile,
                "cuda: 3 more steps with an event after every operation; prints ms per step "
                "for matmuls, attention, gate, layer kernels, optimizer, then a table per "
                "operation (summed over layers)");
  cmd->add_option("--steps", o.steps, "Timed steps (mean reported)")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "Untimed steps first")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of weights and tokens")->capture_default_str();
  cmd->add_option("--out,-o", o.json_path, "Also write the results as JSON to this file");
  add_old_spelling(cmd, "--json", o.json_path, "--out");
  cmd->add_option("--peer", o.peer_path,
                  "JSON of bench/peer_train.py (timed in the same device call): ratios to it");
  cmd->callback([] { run_bench_train(o); });
}

}  // namespace moba::cli
