// The sweep runner (sweep.h): classify each planned run by what its folder holds, then
// train, resume or skip it, printing the sweep's progress between runs.
#include "scaling/sweep.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <vector>

#include "core/build_info.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/trainer.h"

namespace moba::scaling {
namespace fs = std::filesystem;
namespace {

// A later piece of a study in the same runs folder (another ladder or --set) plans other
// runs: plan.json keeps the earlier plan's entries of runs this plan does not hold, marked
// "from_earlier_plan", so that the report still compares every run folder's time with its
// plan. An entry of the same name is replaced by this plan's. An earlier plan.json that is
// not a plan (unreadable, no "runs" array) is left to be overwritten, as before.
void keep_earlier_planned_runs(const fs::path& path, nlohmann::json& plan_doc) {
  if (!fs::is_regular_file(path)) return;
  std::ifstream f(path);
  const nlohmann::json old = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (!old.is_object() || !old.contains("runs") || !old["runs"].is_array()) return;
  std::set<std::string> names;
  for (const auto& r : plan_doc["runs"]) names.insert(r["name"].get<std::string>());
  for (nlohmann::json r : old["runs"]) {
    if (!r.is_object() || !r.contains("name") || !r["name"].is_string()) continue;
    if (names.count(r["name"].get<std::string>())) continue;
    r["from_earlier_plan"] = true;
    plan_doc["runs"].push_back(r);
  }
}

using Clock = std::chrono::steady_clock;

enum class State { fresh, restart, resume, finished };

const char* state_name(State s) {
  switch (s) {
    case State::fresh:
      return "train";
    case State::restart:
      return "train anew (started, no checkpoint yet)";
    case State::resume:
      return "resume from its checkpoint";
    case State::finished:
      return "finished: skip";
  }
  return "?";
}

std::string run_status(const fs::path& dir) {
  const fs::path p = dir / "run.json";
  if (!fs::exists(p)) return "";
  try {
    return nlohmann::json::parse(read_regular_file(p.string(), "run.json")).value("status", "");
  } catch (const std::exception&) {
    return "";  // torn or foreign: treated as started, not finished
  }
}

// What the run folder holds, checked against the planned configuration.
State classify(const fs::path& dir, const train::RunConfig& cfg) {
  const bool started = fs::exists(dir / "config.toml") || fs::exists(dir / "run.json") ||
                       fs::exists(dir / "metrics.jsonl");
  if (!started) return State::fresh;
  // The parsed configurations are compared, key by key (never the TOML text).
  const fs::path config = dir / "config.toml";
  std::string changed = "\n  no config.toml";
  if (fs::exists(config)) {
    changed.clear();
    for (const std::string& d : train::run_config_diff(train::load_run_config(dir.string()), cfg))
      changed += "\n  " + d;
  }
  MOBA_CHECK(changed.empty(), "'", dir.string(),
             "' holds a run whose configuration differs from the plan's:", changed,
             "\nthe preset or its data changed since; remove the folder or use another "
             "--runs-dir");
  if (run_status(dir) == "finished") return State::finished;
  return train::has_checkpoint(dir.string()) ? State::resume : State::restart;
}

// Steps a run has done, from its checkpoint (0 when none).
int64_t steps_done(const fs::path& dir) {
  return std::max<int64_t>(0, train::checkpoint_step(dir.string()));
}

// The overall ETA: the plan's estimate of what is left, scaled by how the runs done in
// this invocation compared with their estimates; without an estimate, the executed FLOPs
// left at the FLOP rate seen so far.
struct EtaModel {
  double est_done = 0, flops_done = 0, seconds_done = 0;
  double eta(double est_left, double flops_left) const {
    if (seconds_done <= 0) return est_left >= 0 ? est_left : -1;
    if (est_left >= 0 && est_done > 0) return est_left * seconds_done / est_done;
    return flops_done > 0 ? flops_left * seconds_done / flops_done : -1;
  }
};

// --device cuda needs the CUDA kernels compiled in and a device; --gpus N needs NCCL and N
// devices: checked once, before the first run, so that a wrong build fails at once and not
// once per run.
void check_device(const std::string& device, int gpus) {
  if (device != "cuda") return;
  if (gpus > 0) train::check_gpus_build();  // a build without NCCL: said first, as by moba train
  MOBA_CHECK(built_with_cuda(),
             "--device cuda: this moba was built without the CUDA kernels (configure with "
             "-DMOBA_CUDA=ON on a machine with nvcc; `moba info` says what a build has)");
  std::string why;
  const size_t devices = cuda_devices(&why).size();
  MOBA_CHECK(devices > 0, "--device cuda: no CUDA device (", why, ")");
  MOBA_CHECK(devices >= static_cast<size_t>(gpus), "--gpus ", gpus, ": this machine shows ",
             devices, " CUDA device(s)");
}

// --gpus N: every run's global batch split evenly over the N GPUs.
void check_gpus_batches(const Plan& plan) {
  if (plan.gpus > 0)
    for (const PlannedRun& r : plan.runs)
      train::check_gpus_batch(plan.gpus, r.config.train.batch_size, r.config.name);
}

// What the progress lines say the runs train on: "cpu", "cuda" or "2 GPUs".
std::string where(const SweepOptions& o) {
  return o.gpus > 0 ? std::to_string(o.gpus) + " GPUs" : o.device;
}

}  // namespace

SweepSummary run_sweep(const SweepConfig& sweep0, const SweepOptions& o) {
  const auto t0 = Clock::now();
  SweepConfig sweep = sweep0;
  if (!o.runs_dir.empty()) sweep.runs_dir = o.runs_dir;
  MOBA_CHECK(o.device == "cpu" || o.device == "cuda", "--device must be cpu or cuda, got '",
             o.device, "'");
  MOBA_CHECK(o.gpus >= 0, "--gpus must be >= 1, got ", o.gpus);
  if (o.gpus > 0) {
    train::check_gpus_device(o.gpus, o.device, true);
    MOBA_CHECK(o.plan_only || o.launch_ranks, "internal: --gpus without a rank launcher");
    MOBA_CHECK(o.interrupt_after_steps < 0, "internal: interrupt_after_steps is not for --gpus");
  }
  Plan plan = make_plan(sweep, o.data, o.eval_data);
  if (o.gpus > 0) plan_on_gpus(plan, o.gpus);
  print_plan(o.out, plan);
  if (o.out) {
    if (o.gpus > 0)
      std::fprintf(o.out,
                   "device: %d GPUs (every run trains data parallel in bf16 mixed precision on "
                   "%d GPUs of this machine, one process per GPU; the runs one after another)\n",
                   o.gpus, o.gpus);
    else
      std::fprintf(o.out, "device: %s\n",
                   o.device == "cuda"
                       ? "cuda (every run trains in bf16 mixed precision on the GPU)"
                       : "cpu (every run trains in float32 on the CPU)");
    std::fflush(o.out);
  }
  if (!o.plan_json.empty()) {
    nlohmann::json doc = plan_json(plan);
    doc["device"] = o.device;
    train::write_file_atomic(o.plan_json, doc.dump(2) + "\n");
  }
  SweepSummary sum;
  if (o.plan_only) {
    for (const auto& check : {std::function<void()>([&] { check_data_reuse(plan, o.force_reuse); }),
                              std::function<void()>([&] { check_gpus_batches(plan); }),
                              std::function<void()>([&] { check_supported(plan, o.device); })})
      try {
        check();
      } catch (const Error& e) {
        if (o.out) std::fprintf(o.out, "\nrefused as it stands: %s\n", e.what());
      }
    return sum;
  }
  check_data_reuse(plan, o.force_reuse);
  check_gpus_batches(plan);
  if (o.check_machine) check_device(o.device, o.gpus);
  check_supported(plan, o.device);  // every run, before the first one starts
  const std::string& data = plan.sweep.base.data;
  MOBA_CHECK(data.rfind("synthetic:", 0) == 0 || fs::exists(fs::path(data) / "manifest.json"),
             "data '", data,
             "' is not a folder made by `moba prepare` (no manifest.json); "
             "prepare it first (docs/data.md) or pass --data DIR");

  const fs::path runs_dir(sweep.runs_dir);
  fs::create_directories(runs_dir);
  nlohmann::json plan_doc = plan_json(plan);
  plan_doc["device"] = o.device;
  keep_earlier_planned_runs(runs_dir / "plan.json", plan_doc);
  train::write_file_atomic((runs_dir / "plan.json").string(), plan_doc.dump(2) + "\n");

  const size_t n = plan.runs.size();
  std::vector<State> states(n);
  std::vector<double> fraction_left(n, 1.0);  // of each run's steps
  for (size_t i = 0; i < n; ++i) {
    const PlannedRun& r = plan.runs[i];
    const fs::path dir = runs_dir / r.config.name;
    states[i] = classify(dir, r.config);
    if (states[i] == State::finished) fraction_left[i] = 0;
    if (states[i] == State::resume)
      fraction_left[i] =
          1.0 - static_cast<double>(steps_done(dir)) / static_cast<double>(r.config.train.steps);
  }
  if (o.out) {
    std::fprintf(o.out, "\nruns in %s:\n", runs_dir.string().c_str());
    for (size_t i = 0; i < n; ++i)
      std::fprintf(o.out, "  %zu/%zu %s: %s\n", i + 1, n, plan.runs[i].config.name.c_str(),
                   state_name(states[i]));
    std::fflush(o.out);
  }

  EtaModel eta;
  std::vector<std::string> failures;
  for (size_t i = 0; i < n; ++i) {
    const PlannedRun& r = plan.runs[i];
    const fs::path dir = runs_dir / r.config.name;
    if (states[i] == State::finished) {
      ++sum.skipped;
      continue;
    }
    double est_left = 0, flops_left = 0;
    for (size_t j = i; j < n; ++j) {
      est_left = est_left < 0 || plan.runs[j].seconds < 0
                     ? -1
                     : est_left + plan.runs[j].seconds * fraction_left[j];
      flops_left += plan.runs[j].flops_exec * fraction_left[j];
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    if (o.out) {
      std::fprintf(
          o.out,
          "\n=== sweep %s on %s: run %zu/%zu %s (%s non-embedding parameters, %s tokens, %s; "
          "%s) | sweep elapsed %s, ETA %s ===\n",
          sweep.name.c_str(), where(o).c_str(), i + 1, n, r.config.name.c_str(),
          train::format_count(static_cast<double>(r.params.non_embedding)).c_str(),
          train::format_count(r.tokens).c_str(), state_name(states[i]),
          r.seconds >= 0
              ? ("estimated " + train::format_duration(r.seconds * fraction_left[i])).c_str()
              : "no estimate",
          train::format_duration(elapsed).c_str(),
          train::format_duration(eta.eta(est_left, flops_left)).c_str());
      std::fflush(o.out);
    }
    if (states[i] == State::restart)
      for (const char* f : {"metrics.jsonl", "run.json", "config.toml"}) fs::remove(dir / f);
    const bool resume = states[i] == State::resume;
    const auto run_t0 = Clock::now();
    try {
      if (o.gpus > 0) {  // N processes train it (rank 0 writes its folder); this one waits
        o.launch_ranks({&r.config, dir.string(), resume, o.verbose});
      } else {
        train::Trainer trainer(
            r.config, {dir.string(), "", resume, o.trainer_progress ? o.out : nullptr, o.device,
                       o.verbose});
        if (o.interrupt_after_steps >= 0) {
          trainer.run(o.interrupt_after_steps);
          sum.interrupted = true;
          if (o.out)
            std::fprintf(o.out, "sweep interrupted after step %lld of %s (test)\n",
                         static_cast<long long>(trainer.state().step), r.config.name.c_str());
          break;
        }
        trainer.run();
      }
      resume ? ++sum.resumed : ++sum.trained;
    } catch (const Error& e) {
      ++sum.failed;
      failures.push_back(r.config.name + ": " + e.what());
      if (o.out)
        std::fprintf(o.out, "run %s failed: %s\n(the sweep goes on)\n", r.config.name.c_str(),
                     e.what());
    }
    eta.seconds_done += std::chrono::duration<double>(Clock::now() - run_t0).count();
    eta.est_done += r.seconds * fraction_left[i];
    eta.flops_done += r.flops_exec * fraction_left[i];
  }
  sum.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (std::FILE* out = o.result ? o.result : o.out) {
    std::fprintf(out,
                 "\nsweep %s on %s: %d trained, %d resumed, %d skipped (finished before), %d "
                 "failed in %s; runs in %s\n",
                 sweep.name.c_str(), where(o).c_str(), sum.trained, sum.resumed, sum.skipped,
                 sum.failed,
                 train::format_duration(sum.seconds).c_str(), runs_dir.string().c_str());
    std::fflush(out);
  }
  if (!failures.empty()) {
    std::string list;
    for (const std::string& f : failures) list += "\n  " + f;
    MOBA_CHECK(false, sum.failed, " run(s) of sweep ", sweep.name, " failed:", list,
               "\nrerun the same command to retry them (finished runs are skipped)");
  }
  return sum;
}

}  // namespace moba::scaling
