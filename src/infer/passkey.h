// Passkey retrieval (the small-model form of the needle-in-a-haystack test): a random
// number of N digits is stated once, in one sentence, at a chosen depth of a long text from
// a prepared corpus, and asked for at the end; the score is the accuracy of the model's
// greedy continuation. Over a grid of context lengths and depths it shows whether MoBA's
// gate finds the block that holds the key (docs/eval.md).
//
//   filler ... The pass key is 71432. Remember it. 71432 is the pass key. ... filler
//   What is the pass key? The pass key is            -> expected continuation " 71432"
//
// Each prompt has exactly the requested length in tokens: filler + needle + question.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "infer/engine.h"

namespace moba::infer {

struct PasskeyGrid {
  std::vector<int64_t> lengths;  // prompt lengths in tokens, each > 0
  std::vector<double> depths;    // where the needle starts, in [0, 1] of the filler
  int64_t trials = 5;            // prompts per (length, depth) cell
  uint64_t seed = 0;
  int digits = 5;                // of the key, 1..18; the first digit is never 0

  // Throws moba::Error naming the problem (an empty list, a length < 1, a depth outside
  // [0, 1], trials < 1, digits outside 1..18).
  void validate() const;
};

// One prompt of the test.
struct PasskeyCase {
  int64_t length = 0;  // == prompt.size()
  double depth = 0;    // as asked
  int64_t trial = 0;
  std::string key;               // the digits
  std::vector<int32_t> prompt;   // (length)
  int64_t needle_begin = 0;      // token range of the needle sentence in the prompt
  int64_t needle_end = 0;
  int64_t filler = 0;            // filler tokens in the prompt
  int64_t answer_tokens = 0;     // tokens of the expected continuation " <key>"
};

// Builds the prompts from a stream of filler tokens (the corpus' documents, concatenated).
class PasskeyGenerator {
 public:
  // The needle may move from the requested depth by at most this many tokens, to start
  // right after a sentence end ('.', '!', '?' or a line break) when one is that close.
  static constexpr int64_t kSnapTokens = 96;

  PasskeyGenerator(std::shared_ptr<const data::Tokenizer> tokenizer, std::vector<int32_t> filler);
  // The filler of a prepared folder: its validation documents in order, then its training
  // documents, joined by blank lines, up to max_tokens (at least one document; repeated
  // when the folder holds fewer tokens).
  static PasskeyGenerator from_dataset(const data::Dataset& ds,
                                       std::shared_ptr<const data::Tokenizer> tokenizer,
                                       int64_t max_tokens);

  // The prompt of one cell and trial: a pure function of (length, depth, trial, seed,
  // digits). Throws moba::Error when `length` cannot hold the needle and the question.
  PasskeyCase make(int64_t length, double depth, int64_t trial, uint64_t seed, int digits) const;
  // Every cell of the grid, lengths outer, then depths, then trials.
  std::vector<PasskeyCase> make_all(const PasskeyGrid& grid) const;

  // The needle sentence, the question and the answer of a key (texts, not tokens).
  static std::string needle_text(const std::string& key);
  static std::string question_text();
  static std::string answer_text(const std::string& key);
  // The fewest tokens a prompt with this key needs: needle and question, no filler.
  int64_t min_length(const std::string& key) const;

  const data::Tokenizer& tokenizer() const { return *tok_; }
  int64_t filler_tokens() const { return static_cast<int64_t>(filler_.size()); }

 private:
  std::shared_ptr<const data::Tokenizer> tok_;
  std::vector<int32_t> filler_;
  std::vector<uint8_t> ends_sentence_;  // (V) 1 where a token's text ends a sentence
};

// Is the decoded continuation the key? Leading white space skipped, then its run of digits
// must equal the key exactly.
bool passkey_correct(const std::string& continuation, const std::string& key);

struct PasskeyOutcome {
  std::string continuation;  // the decoded greedy tokens
  bool correct = false;
  // Teacher-forced loss (nats per token) of the answer " <key>", and of the same answer with a
  // decoy key (passkey_decoy) the prompt never states: a model that reads the needle gives
  // its key a lower loss than the decoy even where its greedy continuation is wrong; a model
  // that ignores it gives both the same loss in expectation.
  double key_nll = 0.0, decoy_nll = 0.0;
};

// A key of the same length that differs from `key` in every digit: each digit d becomes
// (d + 5) mod 10, except that a leading 0 becomes 9 (keys start with 1..9).
std::string passkey_decoy(const std::string& key);

// Runs every case through the engine, engine.batch() prompts at a time (the last group is
// padded with copies of its last prompt): prefill, then greedy decoding of answer_tokens
// tokens. progress(done, total) after each group (may be empty).
std::vector<PasskeyOutcome> score_passkey(
    Engine& engine, const data::Tokenizer& tokenizer, const std::vector<PasskeyCase>& cases,
    const std::function<void(size_t, size_t)>& progress = {});

// Accuracy per cell: correct[d][l] of `trials` at depths[d], lengths[l].
struct PasskeyTable {
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  int64_t trials = 0;
  std::vector<std::vector<int64_t>> correct;  // (depths, lengths)
  // Mean teacher-forced loss of the key's and the decoy's answers per cell (nats/token).
  std::vector<std::vector<double>> key_nll, decoy_nll;  // (depths, lengths)
  double accuracy(size_t d, size_t l) const {
    return static_cast<double>(correct[d][l]) / static_cast<double>(trials);
  }
};
PasskeyTable tabulate(const PasskeyGrid& grid, const std::vector<PasskeyCase>& cases,
                      const std::vector<PasskeyOutcome>& outcomes);

// The heatmap (x = context length, y = depth, colour = accuracy, the numbers in the cells)
// as <dir>/passkey.png and passkey.svg. Returns the paths written; empty in a build without
// cairo (nothing drawn).
std::vector<std::string> write_passkey_figure(const PasskeyTable& table, const std::string& title,
                                              const std::string& dir);

// `moba eval passkey`: the run's checkpoint, the tokenizer and filler of `data_dir` (empty:
// the run's own data), the grid, an engine from `factory`; writes out_dir/passkey.json and
// the figure, and returns the JSON. Checks everything it can before any work: a length that
// with its answer exceeds the model's context, a data folder tokenized unlike the run's
// data or with a vocabulary above the model's, a synthetic run without --data.
struct PasskeyRunOptions {
  std::string run_dir;
  std::string data_dir;
  std::string out_dir;
  std::string device = "cpu";
  std::string attention = "auto";  // auto (the checkpoint's last step), moba, full
  int64_t batch = 1;               // prompts per engine batch
  PasskeyGrid grid;
};
using EngineFactory = std::function<std::unique_ptr<Engine>(
    const model::ModelConfig&, std::span<const float>, const EngineOptions&)>;
nlohmann::json run_passkey(const PasskeyRunOptions& opt, const EngineFactory& factory,
                           std::FILE* log);

}  // namespace moba::infer
