#include "infer/passkey.h"
#include "infer/run.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "infer/sampler.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace moba::infer {
namespace fs = std::filesystem;

namespace {

// The random stream of one (length, depth, trial) cell: its words hashed together.
uint64_t cell_stream(int64_t length, double depth, int64_t trial) {
  uint64_t d = 0;
  std::memcpy(&d, &depth, sizeof d);
  return counter_bits(static_cast<uint64_t>(length), d, static_cast<uint64_t>(trial));
}

std::string draw_key(uint64_t seed, uint64_t stream, uint64_t attempt, int digits) {
  std::string key;
  for (int i = 0; i < digits; ++i) {
    const uint64_t r = counter_bits(seed, stream, attempt * 64 + static_cast<uint64_t>(i));
    key.push_back(static_cast<char>(i == 0 ? '1' + r % 9 : '0' + r % 10));
  }
  return key;
}

}  // namespace

void PasskeyGrid::validate() const {
  MOBA_CHECK(!lengths.empty(), "--lengths: give at least one context length");
  MOBA_CHECK(!depths.empty(), "--depths: give at least one depth");
  for (int64_t l : lengths) MOBA_CHECK(l >= 1, "--lengths: a context length must be >= 1, got ", l);
  for (double d : depths)
    MOBA_CHECK(std::isfinite(d) && d >= 0.0 && d <= 1.0,
               "--depths: a depth is a fraction of the text in [0, 1], got ", d);
  MOBA_CHECK(trials >= 1, "--trials must be >= 1, got ", trials);
  MOBA_CHECK(digits >= 1 && digits <= 18, "the pass key has 1 to 18 digits, got ", digits);
}

std::string PasskeyGenerator::needle_text(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}
std::string PasskeyGenerator::question_text() { return "\nWhat is the pass key? The pass key is"; }
std::string PasskeyGenerator::answer_text(const std::string& key) { return " " + key; }

PasskeyGenerator::PasskeyGenerator(std::shared_ptr<const data::Tokenizer> tokenizer,
                                   std::vector<int32_t> filler)
    : tok_(std::move(tokenizer)), filler_(std::move(filler)) {
  MOBA_CHECK(tok_ != nullptr, "the passkey generator needs a tokenizer");
  MOBA_CHECK(!filler_.empty(), "the passkey generator needs filler text (the corpus is empty)");
  const int64_t V = tok_->vocab_size();
  ends_sentence_.assign(static_cast<size_t>(V), 0);
  for (int64_t id = 0; id < V; ++id) {
    const int32_t i = static_cast<int32_t>(id);
    const std::string s = tok_->decode(std::span<const int32_t>(&i, 1));
    ends_sentence_[static_cast<size_t>(id)] =
        !s.empty() && std::strchr(".!?\n", s.back()) != nullptr;
  }
  for (int32_t t : filler_)
    MOBA_CHECK(t >= 0 && t < V, "filler token ", t, " is outside the tokenizer's [0, ", V, ")");
}

PasskeyGenerator PasskeyGenerator::from_dataset(const data::Dataset& ds,
                                                std::shared_ptr<const data::Tokenizer> tokenizer,
                                                int64_t max_tokens) {
  const std::vector<int32_t> sep = tokenizer->encode("\n\n");
  std::vector<int32_t> filler;
  for (data::Split s : {data::Split::val, data::Split::train})
    for (int64_t i = 0; i < ds.documents(s) && static_cast<int64_t>(filler.size()) < max_tokens;
         ++i) {
      const std::vector<int32_t> doc = ds.document(s, i);
      if (doc.empty()) continue;
      if (!filler.empty()) filler.insert(filler.end(), sep.begin(), sep.end());
      filler.insert(filler.end(), doc.begin(), doc.end());
    }
  MOBA_CHECK(!filler.empty(), ds.dir(), ": no document to take the passkey test's text from");
  return PasskeyGenerator(std::move(tokenizer), std::move(filler));
}

int64_t PasskeyGenerator::min_length(const std::string& key) const {
  return static_cast<int64_t>(tok_->encode(needle_text(key)).size() +
                              tok_->encode(question_text()).size());
}

PasskeyCase PasskeyGenerator::make(int64_t length, double depth, int64_t trial, uint64_t seed,
                                   int digits) const {
  MOBA_CHECK(depth >= 0.0 && depth <= 1.0, "a passkey depth lies in [0, 1], got ", depth);
  const uint64_t stream = cell_stream(length, depth, trial);
  const std::vector<int32_t> question = tok_->encode(question_text());
  const int64_t N = static_cast<int64_t>(filler_.size());
  // A key that the filler happens to contain would be found without the needle: draw again.
  for (uint64_t attempt = 0; attempt < 64; ++attempt) {
    PasskeyCase c;
    c.length = length;
    c.depth = depth;
    c.trial = trial;
    c.key = draw_key(seed, stream, attempt, digits);
    const std::vector<int32_t> needle = tok_->encode(needle_text(c.key));
    c.answer_tokens = static_cast<int64_t>(tok_->encode(answer_text(c.key)).size());
    const int64_t F = length - static_cast<int64_t>(needle.size() + question.size());
    MOBA_CHECK(F >= 0, "a passkey prompt of ", length, " tokens cannot hold the needle and the "
               "question (", needle.size() + question.size(), " tokens); use longer --lengths");
    c.filler = F;
    // The filler: F tokens of the stream (cyclically), from a random start moved forward to
    // the next line start when one is near, so that the text does not begin mid-word.
    int64_t start = static_cast<int64_t>(counter_bits(seed, stream, (uint64_t{1} << 20) | attempt) %
                                         static_cast<uint64_t>(N));
    for (int64_t k = 0; k < 256 && k < N; ++k) {
      const int32_t prev = filler_[static_cast<size_t>((start + k + N - 1) % N)];
      const std::string p = tok_->decode(std::span<const int32_t>(&prev, 1));
      if (!p.empty() && p.back() == '\n') {
        start = (start + k) % N;
        break;
      }
    }
    std::vector<int32_t> text(static_cast<size_t>(F));
    for (int64_t i = 0; i < F; ++i) text[static_cast<size_t>(i)] = filler_[static_cast<size_t>((start + i) % N)];
    if (tok_->decode(text).find(c.key) != std::string::npos) continue;
    // The needle's position: depth x F, moved to the nearest sentence end within
    // kSnapTokens (depths 0 and 1 stay at the ends).
    const int64_t p0 = std::llround(depth * static_cast<double>(F));
    int64_t p = p0;
    if (p0 > 0 && p0 < F) {
      const auto ends = [&](int64_t q) {
        return q >= 1 && q <= F && ends_sentence_[static_cast<size_t>(text[static_cast<size_t>(q - 1)])];
      };
      for (int64_t d = 0; d <= kSnapTokens; ++d) {
        if (ends(p0 - d)) { p = p0 - d; break; }
        if (ends(p0 + d)) { p = p0 + d; break; }
      }
    }
    c.prompt.reserve(static_cast<size_t>(length));
    c.prompt.insert(c.prompt.end(), text.begin(), text.begin() + p);
    c.needle_begin = p;
    c.prompt.insert(c.prompt.end(), needle.begin(), needle.end());
    c.needle_end = static_cast<int64_t>(c.prompt.size());
    c.prompt.insert(c.prompt.end(), text.begin() + p, text.end());
    c.prompt.insert(c.prompt.end(), question.begin(), question.end());
    return c;
  }
  detail::fail(__FILE__, __LINE__, "the filler text contains every pass key drawn (64 draws of ",
               digits, " digits); use more digits or another corpus");
}

std::vector<PasskeyCase> PasskeyGenerator::make_all(const PasskeyGrid& grid) const {
  grid.validate();
  std::vector<PasskeyCase> out;
  for (int64_t l : grid.lengths)
    for (double d : grid.depths)
      for (int64_t t = 0; t < grid.trials; ++t) out.push_back(make(l, d, t, grid.seed, grid.digits));
  return out;
}

bool passkey_correct(const std::string& continuation, const std::string& key) {
  size_t i = 0;
  while (i < continuation.size() && std::strchr(" \t\n\r", continuation[i]) != nullptr) ++i;
  size_t j = i;
  while (j < continuation.size() && continuation[j] >= '0' && continuation[j] <= '9') ++j;
  return !key.empty() && continuation.compare(i, j - i, key) == 0 && j - i == key.size();
}

std::vector<PasskeyOutcome> score_passkey(Engine& engine, const data::Tokenizer& tokenizer,
                                          const std::vector<PasskeyCase>& cases,
                                          const std::function<void(size_t, size_t)>& progress) {
  const int64_t B = engine.batch(), V = engine.config().vocab_size;
  MOBA_CHECK(B >= 1, "the engine decodes no sequence (batch ", B, ")");
  const Sampler greedy({.temperature = 0.0});
  std::vector<PasskeyOutcome> out(cases.size());
  for (size_t c0 = 0; c0 < cases.size(); c0 += static_cast<size_t>(B)) {
    const size_t n = std::min(cases.size() - c0, static_cast<size_t>(B));
    std::vector<std::vector<int32_t>> prompts;
    int64_t steps = 0;
    for (int64_t b = 0; b < B; ++b) {
      const PasskeyCase& c = cases[c0 + std::min(static_cast<size_t>(b), n - 1)];
      MOBA_CHECK(c.length + c.answer_tokens - 1 <= engine.capacity(), "a passkey prompt of ",
                 c.length, " tokens and its answer of ", c.answer_tokens,
                 " need a cache of ", c.length + c.answer_tokens - 1, " tokens; the engine holds ",
                 engine.capacity());
      prompts.push_back(c.prompt);
      steps = std::max(steps, c.answer_tokens);
    }
    std::vector<std::vector<int32_t>> generated(static_cast<size_t>(B));
    std::vector<float> logits = engine.prefill(prompts);
    for (int64_t s = 0; s < steps; ++s) {
      const std::vector<int32_t> next = greedy.sample_batch(logits, V, s);
      for (int64_t b = 0; b < B; ++b) generated[static_cast<size_t>(b)].push_back(next[static_cast<size_t>(b)]);
      if (s + 1 < steps) logits = engine.decode(next);
    }
    for (size_t b = 0; b < n; ++b) {
      const PasskeyCase& c = cases[c0 + b];
      std::vector<int32_t>& g = generated[b];
      g.resize(static_cast<size_t>(c.answer_tokens));
      out[c0 + b].continuation = tokenizer.decode(g);
      out[c0 + b].correct = passkey_correct(out[c0 + b].continuation, c.key);
    }
    // Teacher-forced: the loss of each answer, the key's and the decoy's.
    for (int which = 0; which < 2; ++which) {
      std::vector<std::vector<int32_t>> answers;
      int64_t len = 0;
      for (int64_t b = 0; b < B; ++b) {
        const PasskeyCase& c = cases[c0 + std::min(static_cast<size_t>(b), n - 1)];
        answers.push_back(tokenizer.encode(
            PasskeyGenerator::answer_text(which == 0 ? c.key : passkey_decoy(c.key))));
        len = std::max<int64_t>(len, static_cast<int64_t>(answers.back().size()));
      }
      std::vector<double> nll(static_cast<size_t>(B), 0.0);
      std::vector<int64_t> scored(static_cast<size_t>(B), 0);
      logits = engine.prefill(prompts);
      for (int64_t s = 0; s < len; ++s) {
        std::vector<int32_t> next(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) {
          const std::vector<int32_t>& a = answers[static_cast<size_t>(b)];
          const int64_t i = std::min<int64_t>(s, static_cast<int64_t>(a.size()) - 1);
          next[static_cast<size_t>(b)] = a[static_cast<size_t>(i)];
          if (s >= static_cast<int64_t>(a.size())) continue;
          const float* row = &logits[static_cast<size_t>(b * V)];
          double mx = row[0], z = 0.0;
          for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
          for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
          nll[static_cast<size_t>(b)] += mx + std::log(z) - static_cast<double>(row[a[i]]);
          ++scored[static_cast<size_t>(b)];
        }
        // Positions past a longer answer: room was checked for the key's answer only.
        bool room = true;
        for (int64_t b = 0; b < B; ++b) room = room && engine.length(b) < engine.capacity();
        if (s + 1 < len && room) logits = engine.decode(next);
        else if (s + 1 < len) break;
      }
      for (size_t b = 0; b < n; ++b) {
        const double mean = nll[b] / static_cast<double>(std::max<int64_t>(1, scored[b]));
        (which == 0 ? out[c0 + b].key_nll : out[c0 + b].decoy_nll) = mean;
      }
    }
    if (progress) progress(c0 + n, cases.size());
  }
  return out;
}

std::string passkey_decoy(const std::string& key) {
  std::string d = key;
  for (size_t i = 0; i < d.size(); ++i) {
    MOBA_CHECK(d[i] >= '0' && d[i] <= '9', "a pass key holds digits only, got '", key, "'");
    d[i] = static_cast<char>('0' + (d[i] - '0' + 5) % 10);
  }
  if (!d.empty() && d[0] == '0') d[0] = '9';  // (the key's first digit was 5)
  return d;
}

PasskeyTable tabulate(const PasskeyGrid& grid, const std::vector<PasskeyCase>& cases,
                      const std::vector<PasskeyOutcome>& outcomes) {
  MOBA_CHECK(cases.size() == outcomes.size(), cases.size(), " passkey cases, ", outcomes.size(),
             " outcomes");
  PasskeyTable t;
  t.lengths = grid.lengths;
  t.depths = grid.depths;
  t.trials = grid.trials;
  t.correct.assign(t.depths.size(), std::vector<int64_t>(t.lengths.size(), 0));
  t.key_nll.assign(t.depths.size(), std::vector<double>(t.lengths.size(), 0.0));
  t.decoy_nll = t.key_nll;
  std::vector<std::vector<int64_t>> seen = t.correct;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto l = std::find(t.lengths.begin(), t.lengths.end(), cases[i].length);
    const auto d = std::find(t.depths.begin(), t.depths.end(), cases[i].depth);
    MOBA_CHECK(l != t.lengths.end() && d != t.depths.end(), "a passkey case of length ",
               cases[i].length, " and depth ", cases[i].depth, " is not on the grid");
    const size_t li = static_cast<size_t>(l - t.lengths.begin()),
                 di = static_cast<size_t>(d - t.depths.begin());
    t.correct[di][li] += outcomes[i].correct;
    t.key_nll[di][li] += outcomes[i].key_nll / static_cast<double>(t.trials);
    t.decoy_nll[di][li] += outcomes[i].decoy_nll / static_cast<double>(t.trials);
    ++seen[di][li];
  }
  for (const auto& row : seen)
    for (int64_t n : row) MOBA_CHECK(n == t.trials, "a passkey cell holds ", n, " trials, not ", t.trials);
  return t;
}

nlohmann::json run_passkey(const PasskeyRunOptions& opt, const EngineFactory& factory,
                           std::FILE* log) {
  opt.grid.validate();
  MOBA_CHECK(!opt.out_dir.empty(), "an output folder is required (-o)");
  MOBA_CHECK(opt.batch >= 1, "--batch must be >= 1, got ", opt.batch);
  // The run, its weights and the attention to run (infer/run.h); its own tokenizer is not
  // needed: the filler's folder brings one.
  const InferenceRun run = load_inference_run(opt.run_dir, opt.attention, "", false);
  const train::RunConfig& cfg = run.cfg;
  const bool synthetic = cfg.data.rfind("synthetic:", 0) == 0;
  MOBA_CHECK(!opt.data_dir.empty() || !synthetic, "the run '", opt.run_dir,
             "' trained on the synthetic source ", cfg.data,
             ", which has no text: pass --data DIR (a folder made by `moba prepare` with the "
             "run's tokenizer)");
  const std::string data_dir = opt.data_dir.empty() ? cfg.data : opt.data_dir;
  if (!opt.data_dir.empty() && !synthetic && fs::is_directory(cfg.data))
    train::check_same_tokenizer(cfg.data, data_dir, "--data");
  const data::Dataset ds = data::Dataset::open(data_dir, {.verify = false, .model_vocab = 0});
  ds.check_vocab(cfg.model.vocab_size);
  std::shared_ptr<const data::Tokenizer> tok = data::Tokenizer::open(data_dir);

  // The prompts first: every length must fit with its answer into the model's context.
  const int64_t longest = *std::max_element(opt.grid.lengths.begin(), opt.grid.lengths.end());
  const PasskeyGenerator gen =
      PasskeyGenerator::from_dataset(ds, tok, std::max<int64_t>(4 * longest, 1 << 16));
  const std::vector<PasskeyCase> cases = gen.make_all(opt.grid);
  int64_t capacity = 0;
  for (const PasskeyCase& c : cases) capacity = std::max(capacity, c.length + c.answer_tokens - 1);
  MOBA_CHECK(capacity <= cfg.model.seq_len, "--lengths: a prompt of ", longest,
             " tokens and its answer need ", capacity, " positions, more than the model's "
             "context (model.seq_len = ", cfg.model.seq_len, ")");

  const train::TrainState& state = run.state;
  const bool has_moba = cfg.model.attention.kind == model::AttentionKind::moba;
  const bool moba = run.moba;
  EngineOptions eo;
  eo.device = opt.device;
  eo.batch = opt.batch;
  eo.capacity = capacity;
  eo.moba = moba;
  std::unique_ptr<Engine> engine = factory(cfg.model, run.params, eo);

  const std::string label = model::attention_label(cfg.model);
  const std::string attention =
      !has_moba ? "full attention"
                : std::string(moba ? "MoBA" : "full attention (MoBA-trained)") + ", S = " +
                      std::to_string(cfg.model.attention.block_size) + ", K = " +
                      std::to_string(cfg.model.attention.top_k) +
                      (label == "hybrid" && moba ? ", hybrid" : "");
  if (log)
    std::fprintf(log, "passkey: %s at step %lld, %s; %zu prompts (%zu lengths x %zu depths x %lld "
                 "trials) from %s\n",
                 opt.run_dir.c_str(), static_cast<long long>(state.step), attention.c_str(),
                 cases.size(), opt.grid.lengths.size(), opt.grid.depths.size(),
                 static_cast<long long>(opt.grid.trials), data_dir.c_str());
  const std::vector<PasskeyOutcome> outcomes =
      score_passkey(*engine, *tok, cases, [&](size_t done, size_t total) {
        if (log) {
          std::fprintf(log, "\rpasskey: %zu/%zu prompts", done, total);
          std::fflush(log);
        }
      });
  if (log) std::fprintf(log, "\n");
  const PasskeyTable table = tabulate(opt.grid, cases, outcomes);

  nlohmann::json j;
  j["run"] = opt.run_dir;
  j["step"] = state.step;
  j["data"] = data_dir;
  j["tokenizer"] = tok->kind();
  j["device"] = opt.device;
  j["attention"] = moba ? "moba" : "full";
  j["attention_label"] = attention;
  j["block_size"] = cfg.model.attention.block_size;
  j["top_k"] = cfg.model.attention.top_k;
  j["seq_len"] = cfg.model.seq_len;
  j["lengths"] = table.lengths;
  j["depths"] = table.depths;
  j["trials"] = table.trials;
  j["seed"] = opt.grid.seed;
  j["digits"] = opt.grid.digits;
  nlohmann::json acc = nlohmann::json::array();
  for (size_t d = 0; d < table.depths.size(); ++d) {
    nlohmann::json row = nlohmann::json::array();
    for (size_t l = 0; l < table.lengths.size(); ++l) row.push_back(table.accuracy(d, l));
    acc.push_back(row);
  }
  j["accuracy"] = acc;  // (depths, lengths)
  // Teacher-forced answer losses (nats/token), (depths, lengths): the key's and a decoy's.
  j["key_nll"] = table.key_nll;
  j["decoy_nll"] = table.decoy_nll;
  j["correct"] = table.correct;
  int64_t total = 0;
  for (const auto& row : table.correct)
    for (int64_t c : row) total += c;
  j["mean_accuracy"] = static_cast<double>(total) / static_cast<double>(cases.size());
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < cases.size(); ++i)
    list.push_back({{"length", cases[i].length},
                    {"depth", cases[i].depth},
                    {"trial", cases[i].trial},
                    {"key", cases[i].key},
                    {"needle_token", cases[i].needle_begin},
                    {"continuation", outcomes[i].continuation},
                    {"correct", outcomes[i].correct},
                    {"key_nll", outcomes[i].key_nll},
                    {"decoy_nll", outcomes[i].decoy_nll}});
  j["cases"] = list;

  fs::create_directories(opt.out_dir);
  train::write_file_atomic((fs::path(opt.out_dir) / "passkey.json").string(), j.dump(2) + "\n");
  std::string run_name = fs::path(opt.run_dir).lexically_normal().filename().string();
  if (run_name.empty() || run_name == "." || run_name == "..") run_name = opt.run_dir;
  if (!cfg.name.empty() && cfg.name != run_name) run_name = cfg.name + " (" + run_name + ")";
  const std::vector<std::string> figures = write_passkey_figure(
      table, "Passkey retrieval: " + run_name + ", " + attention,
      opt.out_dir);
  if (log) {
    if (figures.empty())
      std::fprintf(log, "passkey: this build has no cairo: the figure was skipped (JSON only)\n");
    for (const std::string& f : figures) std::fprintf(log, "passkey: wrote %s\n", f.c_str());
  }
  return j;
}

}  // namespace moba::infer
