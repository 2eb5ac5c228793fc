// moba train: trains a model from a TOML configuration into a run folder
// (docs/trainer.md; the folder's format is docs/run_format.md).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "cli/launcher.h"
#include "core/error.h"
#include "dist/fake_communicator.h"
#include "train/config.h"
#include "train/context_parallel.h"
#include "train/data_parallel.h"
#include "train/supports.h"
#include "train/trainer.h"
#ifdef MOBA_WITH_NCCL
#include <cuda_runtime.h>

#include "dist/nccl_communicator.h"
#endif

namespace moba::cli {
namespace {

struct TrainOptions {
  std::string config;
  std::string out;
  std::string data;
  std::string eval_data;
  bool resume = false;
  std::string device = "cpu";
  bool verbose = false;
  std::vector<std::string> sets;  // --set key=value, in order
  bool schema = false;
  int gpus = 0;                  // --gpus N: N ranks (processes), one per GPU; 0: one process
  int context_parallel = 0;      // --context-parallel R: R ranks (threads) per sequence
  bool context_parallel_given = false;
  int64_t dist_check_every = 100;
  double dist_timeout_s = 600;   // a collective waiting longer fails the job
  bool device_given = false;
};

// A rank of `moba train --gpus N` (started by the launcher, launcher.h): NCCL's communicator
// over the ranks, this process on GPU LOCAL_RANK, then the trainer as rank RANK.
void run_rank(const TrainOptions& o, const train::RunConfig& cfg, const RankEnv& env) {
#ifdef MOBA_WITH_NCCL
  MOBA_CHECK(o.device == "cuda", "rank ", env.rank, ": data-parallel training runs on GPUs "
             "(--device cuda; `moba train --gpus N` sets it)");
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.dist_timeout_s * 1000));
  int devices = 0;
  MOBA_CHECK(cudaGetDeviceCount(&devices) == cudaSuccess && env.local_rank < devices, "rank ",
             env.rank, ": LOCAL_RANK=", env.local_rank, " but this machine shows ", devices,
             " CUDA device(s)");
  MOBA_CHECK(cudaSetDevice(env.local_rank) == cudaSuccess, "rank ", env.rank,
             ": cannot use CUDA device ", env.local_rank);
  dist::NcclId id;
  if (env.rank == 0) {
    id = dist::nccl_unique_id();
    publish_id(env.id_file, id.bytes);
  } else {
    const std::vector<char> bytes = wait_for_id(env.id_file, id.bytes.size(), timeout);
    std::copy(bytes.begin(), bytes.end(), id.bytes.begin());
  }
  try {
    dist::NcclCommunicator comm(id, env.rank, env.world, env.local_rank, timeout);
    train::TrainerOptions t{o.out, o.data, o.resume, stderr, o.device, o.verbose, stdout};
    t.comm = &comm;
    t.dist_check_every = o.dist_check_every;
    train::Trainer trainer(cfg, t);
    trainer.run();
  } catch (const dist::CollectiveTimeout& e) {  // exit code 4: waiting, not the culprit
    throw dist::CollectiveTimeout("rank " + std::to_string(env.rank) + ": " + e.what());
  } catch (const Error& e) {
    throw Error("rank " + std::to_string(env.rank) + ": " + e.what());
  }
#else
  (void)o, (void)cfg;
  MOBA_CHECK(false, "rank ", env.rank, ": this build of moba has no NCCL (data-parallel "
             "training needs a CUDA build that found NCCL; docs/distributed.md)");
#endif
}

// `moba train --context-parallel R --device cuda`: R ranks in this process, rank r a thread
// on GPU r, over NCCL (NVLink multicast off); each with its own Trainer (ModelCuda set
// context parallel); rank 0 prints and writes. A rank that fails outside a collective leaves
// the others waiting in their next one until --dist-timeout; the first failure that is not
// such a timeout is the one reported.
void run_context_parallel_gpus(const TrainOptions& o, const train::RunConfig& cfg,
                               std::chrono::milliseconds timeout) {
#ifdef MOBA_WITH_NCCL
  const int R = o.context_parallel;
  // The kernels' limits and one rank's memory first (each rank's Trainer checks them again).
  train::check_supported(train::context_parallel_rank_config(cfg, R, "cuda"), "cuda");
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  MOBA_CHECK(devices >= R, "--context-parallel ", R, " --device cuda: one GPU per rank, but "
             "this machine shows ", devices, " CUDA device(s)");
  setenv("NCCL_NVLS_ENABLE", "0", 1);  // never NVLink multicast
  const dist::NcclId id = dist::nccl_unique_id();
  std::vector<std::string> errors(static_cast<size_t>(R));
  std::vector<char> waited(static_cast<size_t>(R), 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < R; ++r)
    threads.emplace_back([&, r] {
      try {
        MOBA_CHECK(cudaSetDevice(r) == cudaSuccess, "cannot use CUDA device ", r);
        dist::NcclCommunicator comm(id, r, R, r, timeout);
        train::TrainerOptions t{o.out, o.data, o.resume, stderr, o.device, o.verbose, stdout};
        t.cp_comm = &comm;
        t.dist_check_every = o.dist_check_every;
        train::Trainer trainer(cfg, t);
        trainer.run();
      } catch (const dist::CollectiveTimeout& e) {
        errors[static_cast<size_t>(r)] = e.what();
        waited[static_cast<size_t>(r)] = 1;
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (std::thread& t : threads) t.join();
  for (int pass = 0; pass < 2; ++pass)  // a failure first, then a timeout
    for (int r = 0; r < R; ++r)
      if (!errors[static_cast<size_t>(r)].empty() && waited[static_cast<size_t>(r)] == pass) {
        const std::string what = "rank " + std::to_string(r) + ": " + errors[static_cast<size_t>(r)];
        if (pass) throw dist::CollectiveTimeout(what);
        throw Error(what);
      }
#else
  (void)o, (void)cfg, (void)timeout;
  MOBA_CHECK(false, "--context-parallel --device cuda: this build of moba has no NCCL (it "
             "needs a CUDA build that found NCCL; docs/distributed.md)");
#endif
}

// `moba train --context-parallel R` on the CPU: R ranks in this process, one thread each
// over the fake group (its collectives wait up to --dist-timeout), each with its own
// Trainer; rank 0 prints and writes, the others are silent (the Trainer sees to it).
void run_context_parallel(const TrainOptions& o, const train::RunConfig& cfg) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.dist_timeout_s * 1000));
  if (o.device == "cuda") return run_context_parallel_gpus(o, cfg, timeout);
  dist::FakeGroup group(o.context_parallel, timeout);
  group.run([&](dist::Communicator& comm) {
    train::TrainerOptions t{o.out, o.data, o.resume, stderr, o.device, o.verbose, stdout};
    t.cp_comm = &comm;
    t.dist_check_every = o.dist_check_every;
    train::Trainer trainer(cfg, t);
    trainer.run();
  });
}

void run_train(const TrainOptions& o) {
  if (o.schema) {  // docs/trainer.md's table of keys
    std::fputs(train::config_markdown().c_str(), stdout);
    return;
  }
  // Not CLI11's required(): --schema needs no --out. The same words as CLI11's.
  MOBA_CHECK(!o.out.empty(), "train: --out is required\n(`moba train --help` lists the options)");
  MOBA_CHECK(!o.config.empty() || o.resume,
             "--config X.toml is required (with --resume it defaults to RUN_DIR/config.toml)");
  // A run's own config.toml holds data paths relative to the run folder (load_run_config).
  train::RunConfig cfg = o.config.empty() ? train::load_run_config(o.out, o.sets)
                                          : train::load_config(o.config, o.sets);
  if (!o.eval_data.empty()) cfg.eval.data = o.eval_data;
  MOBA_CHECK(o.dist_check_every >= 0, "--dist-check-every must be >= 0, got ",
             o.dist_check_every);
  MOBA_CHECK(o.dist_timeout_s > 0, "--dist-timeout must be > 0 seconds, got ", o.dist_timeout_s);
  if (o.context_parallel_given) {  // refused before any rank starts, as the ranks would
    train::check_context_parallel(cfg, o.context_parallel, o.device,
                                  o.gpus > 0 || rank_env().has_value());
    run_context_parallel(o, cfg);
    return;
  }
  if (const std::optional<RankEnv> env = rank_env()) {
    MOBA_CHECK(o.gpus == 0, "--gpus inside a rank of `moba train --gpus` (",
               kIdFileEnv, " is set): a rank does not launch ranks");
    run_rank(o, cfg, *env);
    return;
  }
  if (o.gpus > 0) {
    train::check_gpus_device(o.gpus, o.device, o.device_given);
    train::check_gpus_build();
    train::check_gpus_batch(o.gpus, cfg.train.batch_size);
    // The ranks: this command again, without --gpus, on the GPUs.
    std::vector<std::string> command = without_option(process_args(), "--gpus");
    MOBA_CHECK(!command.empty(), "internal: the command line was not recorded");
    command[0] = self_executable();
    if (!o.device_given) {
      command.push_back("--device");
      command.push_back("cuda");
    }
    LaunchOptions l;
    l.ranks = o.gpus;
    l.command = std::move(command);
    launch(l);
    return;
  }
  // Progress (the summary, step and validation lines) on stderr; the closing line on stdout.
  train::Trainer trainer(cfg, {o.out, o.data, o.resume, stderr, o.device, o.verbose, stdout});
  trainer.run();
}

}  // namespace

void add_train(CLI::App& app) {
  static TrainOptions o;
  CLI::App* cmd = app.add_subcommand("train", "Train a model (CPU, or GPU with --device cuda) from a TOML configuration");
  cmd->add_option("--config,-c", o.config, "Run configuration (TOML; see configs/)");
  cmd->add_option("--out,-o", o.out,
                  "Run folder: config.toml, run.json, metrics.jsonl, "
                  "checkpoint/");
  cmd->add_option("--data", o.data, "Token shards folder (overrides the config's data)");
  cmd->add_option("--eval-data", o.eval_data,
                  "Validate on this prepared folder's val split (text the training never saw, "
                  "same tokenizer); sets eval.data");
  cmd->add_option("--set", o.sets,
                  "Override a key of the configuration: --set model.width=512 --set "
                  "attention.top_k=4 (TOML values; every key in docs/trainer.md); repeatable")
      ->allow_extra_args(false)
      ->type_name("KEY=VALUE");
  cmd->add_flag("--schema", o.schema,
                "Print the table of every configuration key (docs/trainer.md) and exit");
  cmd->add_flag("--resume", o.resume, "Continue the run in --out from its checkpoint");
  add_device_option(cmd, o.device,
                    "cpu (float32, OpenBLAS) or cuda (bf16 mixed precision on the GPU; "
                    "docs/trainer_gpu.md); cpu unless given, as in every command")
      ->each([](const std::string&) { o.device_given = true; });
  cmd->add_option("--gpus", o.gpus,
                  "Data parallel over N GPUs of this machine: one process per GPU, each "
                  "training on its rows of every batch (train.batch_size a multiple of N); "
                  "implies --device cuda (docs/distributed.md)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--context-parallel", o.context_parallel,
                  "Context parallel over R ranks: every sequence split into R shards of "
                  "model.seq_len / R positions, one rank (thread) each, the gradients summed "
                  "over the ranks; model.seq_len a multiple of R x attention.block_size, one "
                  "document per row. --device cpu: R threads; --device cuda: one GPU per "
                  "rank over NCCL, every layer MoBA (docs/distributed.md)")
      ->type_name("R")
      ->each([](const std::string&) { o.context_parallel_given = true; });
  cmd->add_option("--dist-check-every", o.dist_check_every,
                  "With --gpus or --context-parallel: compare the ranks' parameter checksums "
                  "every this many steps (also before each checkpoint and at the end; 0: only "
                  "then)")
      ->capture_default_str();
  cmd->add_option("--dist-timeout", o.dist_timeout_s,
                  "With --gpus or --context-parallel: seconds a rank waits for the others in a "
                  "collective before the job stops (must cover a validation and a checkpoint by "
                  "rank 0)")
      ->capture_default_str();
  cmd->add_flag("--verbose,-v", o.verbose,
                "Print the whole configuration at the start (default: one line naming "
                "RUN_DIR/config.toml)");
  cmd->callback([] { run_train(o); });
}

}  // namespace moba::cli
