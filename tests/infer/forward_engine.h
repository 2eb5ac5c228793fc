// Test doubles of infer::Engine (infer/engine.h), for the tools that code against the
// interface (the passkey scorer, `moba eval passkey`) before and beside the real engines:
//
// - ForwardEngineDouble runs model::Model<float>::forward over each whole sequence at every
//   step and returns its last position's logits: no cache, quadratic, but exactly the
//   training forward, so it is also a reference for the real engine's logits.
// - ScriptedEngineDouble returns logits that make greedy decoding emit, for each sequence,
//   the tokens a callback chooses from the prompt (an engine that "knows" an answer, or
//   one that does not).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/error.h"
#include "infer/engine.h"
#include "model/model.h"

namespace moba::infer::testing {

class ForwardEngineDouble : public Engine {
 public:
  ForwardEngineDouble(const model::ModelConfig& cfg, std::span<const float> params,
                      const EngineOptions& opt)
      : model_(cfg.resolved()), params_(params.begin(), params.end()), opt_(opt) {
    MOBA_CHECK(opt.device == "cpu", "the forward test double runs on the cpu only");
    if (opt_.capacity == 0) opt_.capacity = model_.config().seq_len;
    MOBA_CHECK(opt_.capacity <= model_.config().seq_len, "capacity ", opt_.capacity,
               " exceeds model.seq_len ", model_.config().seq_len);
    model_.keep_logits(true);
    seqs_.resize(static_cast<size_t>(opt_.batch));
  }
  const model::ModelConfig& config() const override { return model_.config(); }
  int64_t batch() const override { return opt_.batch; }
  int64_t capacity() const override { return opt_.capacity; }
  int64_t length(int64_t b) const override {
    return static_cast<int64_t>(seqs_[static_cast<size_t>(b)].size());
  }
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts) override {
    MOBA_CHECK(static_cast<int64_t>(prompts.size()) == opt_.batch, prompts.size(),
               " prompts for a batch of ", opt_.batch);
    for (const auto& p : prompts)
      MOBA_CHECK(!p.empty() && static_cast<int64_t>(p.size()) <= opt_.capacity,
                 "a prompt of ", p.size(), " tokens for a capacity of ", opt_.capacity);
    seqs_ = prompts;
    return logits();
  }
  std::vector<float> decode(std::span<const int32_t> tokens) override {
    MOBA_CHECK(static_cast<int64_t>(tokens.size()) == opt_.batch, "decode of ", tokens.size(),
               " tokens for a batch of ", opt_.batch);
    for (size_t b = 0; b < seqs_.size(); ++b) {
      MOBA_CHECK(static_cast<int64_t>(seqs_[b].size()) < opt_.capacity, "sequence ", b,
                 " is at capacity ", opt_.capacity);
      seqs_[b].push_back(tokens[b]);
    }
    return logits();
  }
  size_t cache_bytes() const override { return 0; }

 private:
  std::vector<float> logits() {
    const int64_t V = model_.config().vocab_size;
    std::vector<float> out;
    for (const auto& s : seqs_) {
      model::Batch b;
      b.B = 1;
      b.T = static_cast<int64_t>(s.size());
      b.tokens = s;
      b.tokens.push_back(0);  // a target for the last position: the loss is not used
      model_.forward(params_, b, opt_.moba);
      const std::span<const float> l = model_.logits();
      out.insert(out.end(), l.end() - V, l.end());
    }
    return out;
  }

  model::Model<float> model_;
  std::vector<float> params_;
  EngineOptions opt_;
  std::vector<std::vector<int32_t>> seqs_;
};

class ScriptedEngineDouble : public Engine {
 public:
  using Script = std::function<std::vector<int32_t>(const std::vector<int32_t>& prompt)>;
  ScriptedEngineDouble(const model::ModelConfig& cfg, int64_t batch, int64_t capacity, Script s)
      : cfg_(cfg.resolved()), batch_(batch), capacity_(capacity), script_(std::move(s)) {}
  const model::ModelConfig& config() const override { return cfg_; }
  int64_t batch() const override { return batch_; }
  int64_t capacity() const override { return capacity_; }
  int64_t length(int64_t b) const override { return len_[static_cast<size_t>(b)]; }
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts) override {
    MOBA_CHECK(static_cast<int64_t>(prompts.size()) == batch_, "prompt count");
    answers_.clear();
    len_.clear();
    step_ = 0;
    for (const auto& p : prompts) {
      MOBA_CHECK(static_cast<int64_t>(p.size()) <= capacity_, "prompt longer than the capacity");
      answers_.push_back(script_(p));
      len_.push_back(static_cast<int64_t>(p.size()));
    }
    return logits();
  }
  std::vector<float> decode(std::span<const int32_t> tokens) override {
    MOBA_CHECK(static_cast<int64_t>(tokens.size()) == batch_, "token count");
    ++step_;
    for (int64_t& l : len_) {
      MOBA_CHECK(l < capacity_, "decode past the capacity");
      ++l;
    }
    return logits();
  }
  size_t cache_bytes() const override { return 0; }

 private:
  // Row b: 1 at the scripted token of this step, 0 elsewhere (token 0 once it runs out).
  std::vector<float> logits() const {
    const int64_t V = cfg_.vocab_size;
    std::vector<float> out(static_cast<size_t>(batch_ * V), 0.0f);
    for (int64_t b = 0; b < batch_; ++b) {
      const auto& a = answers_[static_cast<size_t>(b)];
      const int32_t t = step_ < static_cast<int64_t>(a.size()) ? a[static_cast<size_t>(step_)] : 0;
      out[static_cast<size_t>(b * V + t)] = 1.0f;
    }
    return out;
  }

  model::ModelConfig cfg_;
  int64_t batch_, capacity_;
  Script script_;
  std::vector<std::vector<int32_t>> answers_;
  std::vector<int64_t> len_;
  int64_t step_ = 0;
};

}  // namespace moba::infer::testing
