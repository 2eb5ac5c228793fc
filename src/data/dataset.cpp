#include "data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/safe_io.h"
#include "data/hash.h"

namespace moba::data {

namespace fs = std::filesystem;

Packing packing_from_string(const std::string& s) {
  if (s == "document") return Packing::document;
  if (s == "packed") return Packing::packed;
  MOBA_CHECK(false, "packing must be 'document' or 'packed', got '", s, "'");
  return Packing::document;
}

const char* packing_name(Packing p) { return p == Packing::packed ? "packed" : "document"; }

Dataset Dataset::open(const std::string& dir, const OpenOptions& options) {
  Dataset ds;
  ds.dir_ = dir;
  ds.manifest_path_ = (fs::path(dir) / "manifest.json").string();
  const std::string& mp = ds.manifest_path_;
  MOBA_CHECK(fs::exists(mp), mp, ": cannot open (is '", dir, "' a folder made by `moba prepare`?)");
  const std::string text = read_regular_file(mp, "manifest");
  try {
    ds.manifest_ = nlohmann::json::parse(text);
    const auto& m = ds.manifest_;
    MOBA_CHECK(m.at("format") == "moba-data", mp, ": not a moba data manifest");
    MOBA_CHECK(m.at("version") == kFormatVersion, mp, ": data format version ", m.at("version").dump(),
               ", this build reads version ", kFormatVersion);
    ds.vocab_size_ = m.at("vocab_size").get<int64_t>();
    ds.tokenizer_kind_ = m.at("tokenizer").at("kind").get<std::string>();
    const int dtype_bytes = m.at("dtype") == "uint32" ? 4 : 2;
    const auto& all = m.at("stats").at("all");
    if (all.at("tokens").get<int64_t>() > 0)
      ds.bytes_per_token_ = all.at("bytes_per_token").get<double>();
    for (const auto& sh : m.at("shards")) {
      // Names from the manifest stay inside the data folder ("../x", "/etc/shadow").
      const std::string bin = confined_path(dir, sh.at("bin").get<std::string>(), mp);
      const std::string idx = confined_path(dir, sh.at("index").get<std::string>(), mp);
      MappedShard s = MappedShard::open(bin, idx, options.verify);
      MOBA_CHECK(s.vocab_size() == ds.vocab_size_ && s.dtype_bytes() == dtype_bytes, bin,
                 ": header says vocabulary ", s.vocab_size(), " and ", s.dtype_bytes(),
                 "-byte ids, ", mp, " says ", ds.vocab_size_, " and ", dtype_bytes);
      MOBA_CHECK(s.tokens() == sh.at("tokens").get<int64_t>() &&
                     static_cast<int64_t>(s.offsets().size()) - 1 == sh.at("documents").get<int64_t>(),
                 bin, ": holds ", s.tokens(), " tokens in ", s.offsets().size() - 1,
                 " documents, ", mp, " lists ", sh.at("tokens").dump(), " in ",
                 sh.at("documents").dump());
      const int split = sh.at("split") == "val" ? 1 : 0;
      const auto& off = s.offsets();
      for (size_t i = 0; i + 1 < off.size(); ++i) {
        const auto len = static_cast<int64_t>(off[i + 1] - off[i]);
        ds.docs_[split].push_back({static_cast<int32_t>(ds.shards_.size()),
                                   static_cast<int64_t>(off[i]), static_cast<int64_t>(off[i + 1]),
                                   ds.stream_len_[split]});
        ds.stream_len_[split] += len;
      }
      ds.shards_.push_back(std::move(s));
    }
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, mp, ": not a valid manifest (", e.what(), ")");
  }
  if (options.model_vocab > 0) ds.check_vocab(options.model_vocab);
  return ds;
}

void Dataset::check_vocab(int64_t model_vocab) const {
  MOBA_CHECK(vocab_size_ <= model_vocab, manifest_path_, ": the data's vocabulary (",
             vocab_size_, ", ", tokenizer_kind_, ") is larger than the model's (", model_vocab,
             "); set the model's vocab_size to at least ", vocab_size_);
}

int64_t Dataset::longest_document(Split s) const {
  int64_t best = 0;
  for (const Doc& d : docs_[int(s)]) best = std::max(best, d.end - d.begin);
  return best;
}

int64_t Dataset::documents_reaching(Split s, int64_t len) const {
  int64_t n = 0;
  for (const Doc& d : docs_[int(s)]) n += d.end - d.begin >= len;
  return n;
}

std::vector<int32_t> Dataset::document(Split s, int64_t i) const {
  const auto& docs = docs_[int(s)];
  MOBA_CHECK(i >= 0 && i < static_cast<int64_t>(docs.size()), "document ", i, " of the ",
             split_name(s), " split does not exist (", docs.size(), " documents)");
  const Doc& d = docs[static_cast<size_t>(i)];
  std::vector<int32_t> ids(static_cast<size_t>(d.end - d.begin));
  shards_[d.shard].read(d.begin, ids);
  return ids;
}

void Dataset::read_stream(Split s, int64_t pos, std::span<int32_t> out,
                          std::span<int64_t> doc_of) const {
  const auto& docs = docs_[int(s)];
  // The document holding `pos`: the last one starting at or before it.
  auto it = std::upper_bound(docs.begin(), docs.end(), pos,
                             [](int64_t p, const Doc& d) { return p < d.start; });
  MOBA_CHECK(it != docs.begin(), "stream position ", pos, " before the first document");
  size_t di = static_cast<size_t>(it - docs.begin()) - 1;
  size_t done = 0;
  while (done < out.size()) {
    MOBA_CHECK(di < docs.size(), "read past the end of the ", split_name(s), " stream");
    const Doc& d = docs[di];
    const int64_t from = d.begin + (pos + static_cast<int64_t>(done) - d.start);
    const size_t n = std::min(out.size() - done, static_cast<size_t>(d.end - from));
    shards_[d.shard].read(from, out.subspan(done, n));
    std::fill_n(doc_of.begin() + done, n, static_cast<int64_t>(di));
    done += n;
    ++di;
  }
}

Batch Dataset::empty_batch(int64_t B, int64_t T) {
  MOBA_CHECK(B >= 1 && T >= 1, "batch size B and window T must be >= 1, got B=", B, " T=", T);
  Batch b;
  b.B = B;
  b.T = T;
  b.tokens.resize(static_cast<size_t>(B * (T + 1)));
  b.loss_mask.resize(static_cast<size_t>(B * T));
  b.single_document.resize(static_cast<size_t>(B));
  b.cu_seqlens = {0};
  return b;
}

void Dataset::fill_row(Batch& b, int64_t r, Split s, int64_t pos) const {
  const int64_t T = b.T;
  std::vector<int64_t> doc_of(static_cast<size_t>(T + 1));
  read_stream(s, pos, std::span<int32_t>(b.tokens).subspan(static_cast<size_t>(r * (T + 1)), T + 1),
              doc_of);
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0 && doc_of[t] != doc_of[t - 1]) b.cu_seqlens.push_back(r * T + t);
    b.loss_mask[r * T + t] = doc_of[t] == doc_of[t + 1];
  }
  b.cu_seqlens.push_back((r + 1) * T);
  b.single_document[r] = doc_of[0] == doc_of[T];
}

Batch Dataset::train_batch(uint64_t seed, int64_t step, int64_t B, int64_t T, Packing mode) const {
  Batch b = empty_batch(B, T);
  MOBA_CHECK(step >= 0, "step must be >= 0, got ", step);
  const auto& docs = docs_[int(Split::train)];
  // Window starts: every position where T + 1 tokens fit, inside one document (document
  // mode) or anywhere in the training stream (packed); `first[i]` counts the starts in
  // the documents before eligible document i.
  std::vector<size_t> eligible;
  std::vector<uint64_t> first;
  uint64_t starts = 0;
  if (mode == Packing::document) {
    for (size_t i = 0; i < docs.size(); ++i) {
      const int64_t len = docs[i].end - docs[i].begin;
      if (len < T + 1) continue;
      eligible.push_back(i);
      first.push_back(starts);
      starts += static_cast<uint64_t>(len - T);
    }
    MOBA_CHECK(starts > 0, dir_, ": no training document holds T + 1 = ", T + 1,
               " tokens (the longest has ", longest_document(Split::train),
               "); use packed batches or a shorter T");
  } else {
    const int64_t len = stream_len_[int(Split::train)];
    MOBA_CHECK(len >= T + 1, dir_, ": the training split holds ", len,
               " tokens, fewer than T + 1 = ", T + 1);
    starts = static_cast<uint64_t>(len - T);
  }
  const uint64_t key = splitmix64(splitmix64(seed) + static_cast<uint64_t>(step));
  for (int64_t r = 0; r < B; ++r) {
    const uint64_t u = below(splitmix64(key + static_cast<uint64_t>(r)), starts);
    int64_t pos = static_cast<int64_t>(u);
    if (mode == Packing::document) {
      const size_t e = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), u) -
                                           first.begin()) - 1;
      pos = docs[eligible[e]].start + static_cast<int64_t>(u - first[e]);
    }
    fill_row(b, r, Split::train, pos);
  }
  return b;
}

Batch Dataset::validation_windows(int64_t T, int64_t count, Split split) const {
  Batch b = empty_batch(count, T);
  const auto& docs = docs_[int(split)];
  const int64_t len = stream_len_[int(split)];
  MOBA_CHECK(len >= T + 1, dir_, ": the ", split == Split::val ? "validation" : "training",
             " split holds ", len, " tokens, fewer than T + 1 = ", T + 1,
             split == Split::val ? " (prepare with a larger --val-fraction)" : "");
  // Windows inside one document: doc i offers (its length) / (T + 1) of them.
  std::vector<size_t> doc;
  std::vector<int64_t> first;
  int64_t W = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    const int64_t k = (docs[i].end - docs[i].begin) / (T + 1);
    if (k == 0) continue;
    doc.push_back(i);
    first.push_back(W);
    W += k;
  }
  const int64_t inside = std::min(W, count);
  for (int64_t r = 0; r < inside; ++r) {
    // Spread evenly: window floor(r * W / inside) of all W.
    const int64_t w = static_cast<int64_t>((static_cast<__int128>(r) * W) / inside);
    const size_t e = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), w) -
                                         first.begin()) - 1;
    fill_row(b, r, split, docs[doc[e]].start + (w - first[e]) * (T + 1));
  }
  const int64_t rest = count - inside;
  for (int64_t r = 0; r < rest; ++r) {
    const int64_t pos = static_cast<int64_t>((static_cast<__int128>(r) * (len - T)) / rest);
    fill_row(b, inside + r, split, pos);
  }
  return b;
}

}  // namespace moba::data
