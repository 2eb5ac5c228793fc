// moba generate: text from a trained run. The prompt is prefilled through training's
// attention (MoBA or dense per layer), then tokens are decoded one at a time over the KV
// cache (MoBA layers gate over the cache's block means) and sampled (infer/sampler.h). One
// prompt streams its text to stdout as it is generated; a batch file's prompts decode
// together and print one after the other. Timings go to stderr: prefill and decode tokens/s.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/timing.h"
#include "core/safe_io.h"
#include "data/text.h"
#include "infer/engine.h"
#include "infer/plan.h"
#include "infer/run.h"
#include "infer/sampler.h"

namespace moba::cli {
namespace {

struct GenerateOptions {
  std::string run_dir, checkpoint, prompt, prompt_file, batch_file, device = "cpu";
  std::string attention = "auto", out;
  int64_t max_new_tokens = 256, context = 0;
  double temperature = 1.0, top_p = 1.0, plan_memory_gb = 0.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool plan = false;
};

// Text read from a prompt file must be valid UTF-8: a prompt is text, and a file that is not
// is more likely the wrong file than a prompt.
std::string checked_utf8(const std::string& text, const std::string& origin) {
  std::string repaired;
  const int64_t bad = data::append_valid_utf8(text, repaired);
  MOBA_CHECK(bad == 0, origin, " is not valid UTF-8 (", bad,
             " invalid byte sequence(s)); prompts must be UTF-8 text");
  return text;
}

// --batch-file: one prompt per line; a line that starts with '"' is a JSON string (for
// prompts holding line breaks); empty lines are skipped.
std::vector<std::string> read_batch_file(const std::string& path) {
  const std::string text = checked_utf8(read_regular_file(path, "batch file"), "batch file '" + path + "'");
  std::vector<std::string> prompts;
  std::istringstream in(text);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line.front() == '"') {
      try {
        line = nlohmann::json::parse(line).get<std::string>();
      } catch (const nlohmann::json::exception& e) {
        MOBA_CHECK(false, "batch file '", path, "', line ", n, ": not a JSON string (", e.what(), ")");
      }
    }
    prompts.push_back(line);
  }
  MOBA_CHECK(!prompts.empty(), "batch file '", path, "' holds no prompt");
  return prompts;
}

void run_generate(const GenerateOptions& o) {
  const int sources = !o.prompt.empty() + !o.prompt_file.empty() + !o.batch_file.empty();
  MOBA_CHECK(sources <= 1, "give one of --prompt, --prompt-file and --batch-file");
  MOBA_CHECK(o.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got ", o.max_new_tokens);
  MOBA_CHECK(o.context >= 0, "--context must be >= 0 (0: the model's seq_len), got ", o.context);
  infer::SamplerOptions so;
  so.temperature = o.temperature;
  so.top_k = o.top_k;
  so.top_p = o.top_p;
  so.seed = o.seed;
  const infer::Sampler sampler(so);  // validates before the run is loaded

  infer::InferenceRun run = infer::load_inference_run(o.run_dir, o.attention, o.checkpoint, !o.plan);
  const model::ModelConfig& mc = run.cfg.model;

  std::vector<std::string> texts;
  if (!o.prompt.empty()) texts.push_back(checked_utf8(o.prompt, "--prompt"));
  if (!o.prompt_file.empty())
    texts.push_back(checked_utf8(read_regular_file(o.prompt_file, "prompt file"),
                                 "prompt file '" + o.prompt_file + "'"));
  if (!o.batch_file.empty()) texts = read_batch_file(o.batch_file);
  MOBA_CHECK(o.plan || !texts.empty(), "no prompt: give --prompt, --prompt-file or --batch-file");

  std::vector<std::vector<int32_t>> prompts;
  int64_t longest = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    MOBA_CHECK(!texts[i].empty(), texts.size() > 1 ? "prompt " + std::to_string(i) : "the prompt",
               " is empty");
    prompts.push_back(run.tokenizer->encode(texts[i]));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts.back().size()));
  }
  const int64_t batch = std::max<int64_t>(1, static_cast<int64_t>(prompts.size()));
  const int64_t context = o.context > 0 ? o.context : mc.seq_len;

  if (o.plan) {
    infer::PlanInput pi;
    pi.model = mc;
    pi.device = o.device == "cuda" ? "cuda" : "cpu";
    pi.batch = batch;
    pi.context = context;
    pi.prompt = longest > 0 ? std::min(longest, context) : 0;
    pi.memory_bytes = o.plan_memory_gb * 1e9;
    std::fputs(infer::plan_markdown(infer::plan_inference(pi)).c_str(), stdout);
    return;
  }
  if (context > mc.seq_len)
    std::fprintf(stderr, "moba: note: --context %lld is longer than the model's training context "
                 "(seq_len %lld): positions past it are extrapolation\n",
                 static_cast<long long>(context), static_cast<long long>(mc.seq_len));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t n = static_cast<int64_t>(prompts[i].size());
    MOBA_CHECK(n + o.max_new_tokens <= context, prompts.size() > 1 ? "prompt " + std::to_string(i) : "the prompt",
               " is ", n, " tokens; with --max-new-tokens ", o.max_new_tokens, " it needs ",
               n + o.max_new_tokens, " positions, more than the context of ", context,
               context == mc.seq_len ? " (the model's seq_len; --context raises it)" : "");
  }

  infer::EngineOptions eo;
  eo.device = o.device;
  eo.batch = batch;
  eo.capacity = context;
  eo.moba = run.moba;
  std::unique_ptr<infer::Engine> engine = infer::make_engine(mc, run.params, eo);
  std::fprintf(stderr, "%s at step %lld, %s attention, %s, batch %lld, context %lld\n",
               o.run_dir.c_str(), static_cast<long long>(run.state.step),
               run.moba ? "MoBA" : "full", o.device.c_str(), static_cast<long long>(batch),
               static_cast<long long>(context));

  const bool stream = batch == 1;
  std::vector<std::vector<int32_t>> generated(static_cast<size_t>(batch));
  std::vector<size_t> printed(static_cast<size_t>(batch), 0);
  auto emit = [&](int64_t b) {  // streams the decoded text not yet printed
    const std::string text = run.tokenizer->decode(generated[b]);
    // Hold back a trailing incomplete UTF-8 sequence (a character split over byte tokens).
    size_t end = text.size();
    for (size_t back = 1; back <= 3 && back <= text.size(); ++back) {
      const unsigned char c = static_cast<unsigned char>(text[text.size() - back]);
      if ((c & 0xC0) == 0x80) continue;                         // continuation byte
      const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      if (need > back) end = text.size() - back;
      break;
    }
    if (end > printed[b]) {
      std::fwrite(text.data() + printed[b], 1, end - printed[b], stdout);
      std::fflush(stdout);
      printed[b] = end;
    }
  };

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = engine->prefill(prompts);
  const double prefill_s = seconds_since(t0);
  if (stream) {
    std::fputs(texts[0].c_str(), stdout);
    std::fflush(stdout);
  }
  const auto t1 = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const std::vector<int32_t> next = sampler.sample_batch(logits, mc.vocab_size, step);
    for (int64_t b = 0; b < batch; ++b) generated[b].push_back(next[b]);
    if (stream) emit(0);
    if (step + 1 < o.max_new_tokens) logits = engine->decode(next);
  }
  const double decode_s = seconds_since(t1);
  std::vector<std::string> outputs;
  for (int64_t b = 0; b < batch; ++b) outputs.push_back(run.tokenizer->decode(generated[b]));
  if (stream) {
    if (printed[0] < outputs[0].size()) std::fputs(outputs[0].c_str() + printed[0], stdout);
    std::fputs("\n", stdout);
  } else {
    for (int64_t b = 0; b < batch; ++b)
      std::printf("=== %lld\n%s%s\n", static_cast<long long>(b), texts[b].c_str(),
                  outputs[b].c_str());
  }
  std::fflush(stdout);
  int64_t prompt_tokens = 0;
  for (const auto& p : prompts) prompt_tokens += static_cast<int64_t>(p.size());
  // The last step samples from the last decode's logits: max_new_tokens - 1 decode calls.
  const int64_t decoded = batch * (o.max_new_tokens - 1);
  const double prefill_tps = static_cast<double>(prompt_tokens) / prefill_s;
  const double decode_tps = decoded > 0 ? static_cast<double>(decoded) / decode_s : 0.0;
  std::fprintf(stderr, "prefill: %lld tokens in %.1f ms (%.0f tokens/s); decode: %lld tokens in "
               "%.2f s (%.1f tokens/s)\n",
               static_cast<long long>(prompt_tokens), 1e3 * prefill_s, prefill_tps,
               static_cast<long long>(decoded), decode_s, decode_tps);
  if (!o.out.empty()) {
    nlohmann::json j = {{"run", o.run_dir},         {"step", run.state.step},
                        {"attention", run.moba ? "moba" : "full"},
                        {"device", o.device},       {"context", context},
                        {"temperature", o.temperature}, {"top_k", o.top_k},
                        {"top_p", o.top_p},         {"seed", o.seed},
                        {"prefill_tokens", prompt_tokens}, {"prefill_s", prefill_s},
                        {"prefill_tokens_per_s", prefill_tps}, {"decode_tokens", decoded},
                        {"decode_s", decode_s},     {"decode_tokens_per_s", decode_tps}};
    nlohmann::json items = nlohmann::json::array();
    for (int64_t b = 0; b < batch; ++b) {
      // JSON holds UTF-8 only: a model may emit bytes that are not (a byte-level model can
      // stop inside a character, or emit any byte); those become U+FFFD here, the tokens
      // keep them exactly.
      std::string text;
      const int64_t replaced = data::append_valid_utf8(outputs[b], text);
      items.push_back({{"prompt", texts[b]}, {"prompt_tokens", prompts[b].size()},
                       {"tokens", generated[b]}, {"text", text},
                       {"invalid_utf8_replaced", replaced}});
    }
    j["outputs"] = items;
    write_file_atomic(o.out, j.dump(2) + "\n");
  }
}

}  // namespace

void add_generate(CLI::App& app) {
  static GenerateOptions o;
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a trained run (KV cache, "
                                                 "MoBA decode)");
  cmd->add_option("--run,-r", o.run_dir, "Run folder (config.toml and checkpoint/)")->required();
  cmd->add_option("--checkpoint", o.checkpoint,
                  "A checkpoint folder to load instead of the run's own");
  cmd->add_option("--prompt,-p", o.prompt, "The prompt text");
  cmd->add_option("--prompt-file", o.prompt_file, "Read the prompt from this file (UTF-8)");
  cmd->add_option("--batch-file", o.batch_file,
                  "Prompts decoded together, one per line (a line starting with '\"' is a JSON "
                  "string)");
  cmd->add_option("--max-new-tokens,-n", o.max_new_tokens, "Tokens to generate per prompt")
      ->capture_default_str();
  cmd->add_option("--temperature,-t", o.temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Keep the k most likely tokens (0: all)")
      ->capture_default_str();
  cmd->add_option("--top-p", o.top_p, "Nucleus: the smallest set reaching this probability")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed: the same seed gives the same text")
      ->capture_default_str();
  add_device_option(cmd, o.device, "cpu (float32) or cuda (bf16)");
  cmd->add_option("--attention", o.attention,
                  "auto: the attention of the checkpoint's last training step; moba or full")
      ->check(CLI::IsMember({"auto", "moba", "full"}))
      ->capture_default_str();
  cmd->add_option("--context", o.context,
                  "Tokens per sequence the KV cache holds (0: the model's seq_len)")
      ->capture_default_str();
  cmd->add_flag("--plan", o.plan,
                "Print the memory plan (bytes per cached token, totals) and exit");
  cmd->add_option("--memory-gb", o.plan_memory_gb,
                  "With --plan: also the longest context that fits in this memory");
  cmd->add_option("--out,-o", o.out, "Also write prompts, tokens, texts and timings as JSON");
  cmd->callback([] { run_generate(o); });
}

}  // namespace moba::cli
