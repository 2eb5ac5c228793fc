#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "core/build_info.h"
#include "core/error.h"
#include "core/folder_lock.h"
#include "core/safe_io.h"
#include "core/timing.h"
#include "data/pipeline.h"
#include "data/shard.h"
#include "data/sources.h"
#include "data/split.h"
#include "data/stats.h"
#include "data/text.h"
#include "data/tokenizer.h"

namespace moba::data {

namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOBA_CHECK(f.good(), path, ": cannot read");
  std::ostringstream ss;
  ss << f.rdbuf();
  MOBA_CHECK(!f.bad(), path, ": read error");
  return ss.str();
}

// One document as the jobs see it: a source, its split and its place in the shards.
struct Job {
  const Source* source;
  Split split;
  uint64_t key;
};

// Progress on stderr (when there is a log at all; the log keeps the results): rewritten in
// place on a terminal, a line every 10% otherwise.
class Progress {
 public:
  Progress(std::FILE* log, bool enabled, std::string what, int64_t total_docs, int64_t total_bytes)
      : log_(enabled && log ? stderr : nullptr), what_(std::move(what)), total_docs_(total_docs),
        total_bytes_(total_bytes), tty_(log_ && isatty(fileno(log_))), t0_(Clock::now()) {}
  void update(int64_t docs, int64_t bytes) {
    if (!log_) return;
    const double s = seconds_since(t0_);
    const int decile = total_bytes_ ? static_cast<int>(10 * bytes / total_bytes_) : 10;
    const bool done = docs == total_docs_;
    if (tty_ ? (s - last_ < 0.25 && !done) : (decile == last_decile_ && !done)) return;
    last_ = s;
    last_decile_ = decile;
    std::fprintf(log_, "%s%s: %lld/%lld documents, %.1f/%.1f MB, %.1f MB/s%s", tty_ ? "\r\033[K" : "",
                 what_.c_str(), static_cast<long long>(docs), static_cast<long long>(total_docs_),
                 bytes / 1e6, total_bytes_ / 1e6, s > 0 ? bytes / 1e6 / s : 0.0,
                 tty_ && !done ? "" : "\n");
    std::fflush(log_);
  }

 private:
  std::FILE* log_;
  std::string what_;
  int64_t total_docs_, total_bytes_;
  bool tty_;
  Clock::time_point t0_;
  double last_ = -1;
  int last_decile_ = -1;
};

// Our own files in an output folder, removed before a new preparation writes there.
bool is_our_file(const std::string& name) {
  static const std::regex re(R"((train|val)-\d{5}\.(bin|idx)|manifest\.json|tokenizer\.model)");
  return std::regex_match(name, re);
}

// The output folder may be new, empty, or an earlier output of ours holding nothing else;
// it is not touched here. The new output is built in a hidden folder beside it and swapped
// in only when complete (OutputSwap), so a failed or killed prepare leaves the earlier
// dataset as it was.
void check_out_dir(const std::string& dir) {
  if (!fs::exists(dir)) return;
  MOBA_CHECK(fs::is_directory(dir), "output '", dir, "' exists and is not a folder");
  const bool ours = fs::exists(fs::path(dir) / "manifest.json");
  MOBA_CHECK(ours || fs::is_empty(dir), "output folder '", dir, "' is not empty and holds no "
             "manifest.json; choose an empty or new folder (prepare never deletes files it "
             "did not write)");
  for (const auto& e : fs::directory_iterator(dir))
    MOBA_CHECK(is_our_file(e.path().filename().string()), "output folder '", dir, "' holds '",
               e.path().filename().string(), "', which prepare did not write; move it away or "
               "choose another folder (prepare replaces the whole folder)");
}

class OutputSwap {
 public:
  explicit OutputSwap(const std::string& out_dir) {
    fs::path p = fs::absolute(out_dir).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();  // "data/keep/"
    final_ = p;
    const fs::path parent = p.parent_path();
    std::error_code ec;
    fs::create_directories(parent, ec);
    MOBA_CHECK(!ec, "cannot create the folder '", parent.string(), "': ", ec.message());
    const std::string name = p.filename().string();
    // One prepare per output folder: the lock sits beside it (the folder itself is replaced).
    lock_ = std::make_unique<FolderLock>((parent / ("." + name + ".lock")).string(), out_dir);
    staging_ = parent / ("." + name + ".partial");
    old_ = parent / ("." + name + ".old");
    fs::remove_all(staging_);  // left by a killed prepare: never complete
    fs::create_directories(staging_, ec);
    MOBA_CHECK(!ec, "cannot create '", staging_.string(), "': ", ec.message());
  }
  ~OutputSwap() {
    std::error_code ec;
    if (!committed_) fs::remove_all(staging_, ec);  // a failure: the earlier output stays
  }
  const fs::path& staging() const { return staging_; }
  // The complete new output replaces the old one: two renames, the old folder removed last.
  void commit() {
    fs::remove_all(old_);
    if (fs::exists(final_)) fs::rename(final_, old_);
    fs::rename(staging_, final_);
    committed_ = true;
    std::error_code ec;
    fs::remove_all(old_, ec);
  }

 private:
  fs::path final_, staging_, old_;
  std::unique_ptr<FolderLock> lock_;
  bool committed_ = false;
};

// The training text the BPE trainer sees: each line of each training document is kept
// when a hash of (document name, line number) falls below the sampling rate, so the
// sample is spread over every document and the same corpus always gives the same one.
std::unique_ptr<Tokenizer> train_tokenizer(const PrepareConfig& c, const std::vector<Job>& jobs,
                                           std::FILE* log, std::string* serialized) {
  std::vector<const Job*> train;
  int64_t train_bytes = 0;
  for (const Job& j : jobs)
    if (j.split == Split::train) {
      train.push_back(&j);
      train_bytes += j.source->bytes;
    }
  MOBA_CHECK(!train.empty(), "no training documents to train BPE on (val fraction ",
             c.val_fraction, ")");
  const double rate = std::min(1.0, c.bpe_sample_mb * 1e6 / std::max<double>(1, train_bytes));
  const CleanOptions clean{c.strip_gutenberg};
  std::vector<std::string> lines;
  int64_t sample_bytes = 0, done_bytes = 0;
  Progress progress(log, c.progress, "BPE sample", static_cast<int64_t>(train.size()), train_bytes);
  ordered_parallel_map<std::vector<std::string>>(
      train.size(), c.resolved_threads(), 4 * static_cast<size_t>(c.resolved_threads()),
      [&](size_t i) {
        const CleanResult r = clean_document(read_file(train[i]->source->path), clean);
        std::vector<std::string> kept;
        const uint64_t h = fnv1a64(train[i]->source->name);
        std::string_view t = r.text;
        uint64_t line_no = 0;
        for (size_t pos = 0; pos < t.size(); ++line_no) {
          size_t eol = t.find('\n', pos);
          if (eol == std::string_view::npos) eol = t.size();
          if (eol > pos && unit_interval(splitmix64(h + line_no)) < rate)
            kept.emplace_back(t.substr(pos, eol - pos));
          pos = eol + 1;
        }
        return kept;
      },
      [&](size_t i, std::vector<std::string>&& kept) {
        for (auto& l : kept) {
          sample_bytes += static_cast<int64_t>(l.size()) + 1;
          lines.push_back(std::move(l));
        }
        done_bytes += train[i]->source->bytes;
        progress.update(static_cast<int64_t>(i) + 1, done_bytes);
      });
  MOBA_CHECK(!lines.empty(), "the training documents hold no text to train BPE on");
  if (log)  // progress, as the lines above: stderr
    std::fprintf(stderr, "BPE: training on %zu lines (%.1f MB, sampling rate %.3f), vocabulary %lld\n",
                 lines.size(), sample_bytes / 1e6, rate, static_cast<long long>(c.vocab_size));
  size_t next = 0;
  *serialized = train_bpe(
      [&](std::string& line) {
        if (next >= lines.size()) return false;
        line = std::move(lines[next++]);
        return true;
      },
      {c.vocab_size, c.resolved_threads(), false});
  return bpe_tokenizer(*serialized);
}

struct Encoded {
  std::vector<int32_t> ids;
  CleanResult clean;  // text dropped once encoded
  int64_t text_bytes = 0;
};

std::string shard_name(Split s, int k, const char* ext) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s-%05d.%s", split_name(s), k, ext);
  return buf;
}

}  // namespace

int PrepareConfig::resolved_threads() const {
  return threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
}

void PrepareConfig::validate() const {
  MOBA_CHECK(!inputs.empty(), "no input: give one or more files or folders of text documents");
  MOBA_CHECK(tokenizer == "byte" || tokenizer == "bpe", "--tokenizer must be byte or bpe, got '",
             tokenizer, "'");
  MOBA_CHECK(tokenizer != "bpe" || !tokenizer_model.empty() || vocab_size >= 260,
             "--vocab-size must be >= 260 for BPE, got ", vocab_size);
  MOBA_CHECK(tokenizer_model.empty() || tokenizer == "bpe",
             "--tokenizer-model is a SentencePiece model: use it with --tokenizer bpe");
  MOBA_CHECK(vocab_size <= INT32_MAX, "--vocab-size too large: ", vocab_size);
  MOBA_CHECK(val_fraction >= 0 && val_fraction < 1, "--val-fraction must be in [0, 1), got ",
             val_fraction);
  MOBA_CHECK(bpe_sample_mb > 0, "--bpe-sample-mb must be > 0, got ", bpe_sample_mb);
  MOBA_CHECK(shard_tokens >= 1, "--shard-tokens must be >= 1, got ", shard_tokens);
  MOBA_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  MOBA_CHECK(dtype == "auto" || dtype == "uint16" || dtype == "uint32",
             "--dtype must be auto, uint16 or uint32, got '", dtype, "'");
  MOBA_CHECK(!out_dir.empty(), "--out must name a folder");
}

nlohmann::json PrepareConfig::to_json() const {
  return {{"inputs", inputs},           {"out_dir", out_dir},
          {"tokenizer", tokenizer},     {"vocab_size", vocab_size},
          {"tokenizer_model", tokenizer_model}, {"bpe_sample_mb", bpe_sample_mb},
          {"val_fraction", val_fraction}, {"strip_gutenberg", strip_gutenberg},
          {"threads", resolved_threads()}, {"shard_tokens", shard_tokens},
          {"dtype", dtype}};
}

nlohmann::json prepare(const PrepareConfig& c, std::FILE* log) {
  c.validate();
  const auto t_start = Clock::now();
  if (log) {  // the options in words (every one of them is in the manifest), on stderr
    std::string tok = c.tokenizer == "bpe"
                          ? (c.tokenizer_model.empty()
                                 ? "BPE tokenizer (vocabulary " + std::to_string(c.vocab_size) + ")"
                                 : "BPE tokenizer " + c.tokenizer_model)
                          : c.tokenizer + " tokenizer";
    std::fprintf(stderr, "moba prepare: %zu input(s) -> %s: %s, %g of documents in validation, "
                 "%d threads%s\n", c.inputs.size(), c.out_dir.c_str(), tok.c_str(),
                 c.val_fraction, c.resolved_threads(),
                 c.strip_gutenberg ? ", Gutenberg headers stripped" : "");
  }

  const std::vector<Source> sources = collect_sources(c.inputs);
  MOBA_CHECK(!sources.empty(), "no input files found in the given inputs (",
             nlohmann::json(c.inputs).dump(), ")");
  std::vector<Job> jobs;
  int64_t input_bytes = 0;
  for (const Source& s : sources) {
    jobs.push_back({&s, split_of(s.name, c.val_fraction), order_key(s.name)});
    input_bytes += s.bytes;
  }
  std::sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) {
    if (a.split != b.split) return a.split < b.split;
    if (a.key != b.key) return a.key < b.key;
    return a.source->name < b.source->name;
  });
  check_out_dir(c.out_dir);
  OutputSwap swap(c.out_dir);
  const fs::path out = swap.staging();

  // The tokenizer: bytes, a given SentencePiece model, or BPE trained on the training split.
  const auto t_tok = Clock::now();
  std::unique_ptr<Tokenizer> tok;
  nlohmann::json tok_json;
  if (c.tokenizer == "byte") {
    tok = byte_tokenizer();
    tok_json = {{"kind", "byte"}, {"vocab_size", 256}};
  } else {
    std::string model;
    if (!c.tokenizer_model.empty()) {
      model = read_file(c.tokenizer_model);
      tok = bpe_tokenizer_from_file(c.tokenizer_model);
    } else {
      tok = train_tokenizer(c, jobs, log, &model);
    }
    write_new_file((out / "tokenizer.model").string(), model.data(), model.size());
    tok_json = {{"kind", "bpe"}, {"vocab_size", tok->vocab_size()}, {"model", "tokenizer.model"}};
    // SentencePiece stops merging when the corpus has no more pairs to merge: say so rather
    // than let --vocab-size 100000 silently become 16332.
    if (c.tokenizer_model.empty() && tok->vocab_size() < c.vocab_size) {
      tok_json["vocab_size_requested"] = c.vocab_size;
      const std::string note = "--vocab-size " + std::to_string(c.vocab_size) +
                               " asked, the training text gave only " +
                               std::to_string(tok->vocab_size()) + " pieces";
      tok_json["note"] = note;
      std::fprintf(stderr, "moba prepare: note: %s (the vocabulary is %lld)\n", note.c_str(),
                   static_cast<long long>(tok->vocab_size()));
    }
  }
  const double tokenizer_s = seconds_since(t_tok);
  const int64_t vocab = tok->vocab_size();
  const int dtype_bytes = c.dtype == "uint32" || (c.dtype == "auto" && vocab > 65536) ? 4 : 2;
  MOBA_CHECK(dtype_bytes == 4 || vocab <= 65536, "--dtype uint16 cannot hold a vocabulary of ",
             vocab);

  // Encode every document in parallel, write them in order, shard by shard.
  const CleanOptions clean{c.strip_gutenberg};
  nlohmann::json shards = nlohmann::json::array(), docs = nlohmann::json::array();
  std::unique_ptr<ShardWriter> writer;
  Split writer_split = Split::train;
  int shard_count[2] = {0, 0};
  auto close_shard = [&] {
    if (!writer) return;
    writer->finish();
    shards.back()["documents"] = writer->documents();
    shards.back()["tokens"] = writer->tokens();
    writer.reset();
  };
  std::vector<int64_t> doc_tokens[2];
  int64_t split_bytes[2] = {0, 0};
  int64_t skipped_binary = 0, skipped_empty = 0, invalid_utf8 = 0, docs_invalid = 0,
          line_ends = 0, pg_header = 0, pg_footer = 0, done_bytes = 0;
  nlohmann::json skipped = nlohmann::json::array();
  const auto t_enc = Clock::now();
  Progress progress(log, c.progress, "encode", static_cast<int64_t>(jobs.size()), input_bytes);
  ordered_parallel_map<Encoded>(
      jobs.size(), c.resolved_threads(), 4 * static_cast<size_t>(c.resolved_threads()),
      [&](size_t i) {
        Encoded e;
        e.clean = clean_document(read_file(jobs[i].source->path), clean);
        e.text_bytes = static_cast<int64_t>(e.clean.text.size());
        tok->encode(e.clean.text, e.ids);
        e.clean.text = std::string();
        return e;
      },
      [&](size_t i, Encoded&& e) {
        const Job& j = jobs[i];
        done_bytes += j.source->bytes;
        progress.update(static_cast<int64_t>(i) + 1, done_bytes);
        if (e.clean.binary || e.ids.empty()) {
          ++(e.clean.binary ? skipped_binary : skipped_empty);
          skipped.push_back({{"name", j.source->name}, {"why", e.clean.binary ? "binary" : "empty"}});
          return;
        }
        invalid_utf8 += e.clean.invalid_utf8;
        docs_invalid += e.clean.invalid_utf8 > 0;
        line_ends += e.clean.line_ends_fixed;
        pg_header += e.clean.gutenberg_header;
        pg_footer += e.clean.gutenberg_footer;
        const int s = static_cast<int>(j.split);
        if (writer && (writer_split != j.split ||
                       writer->tokens() + static_cast<int64_t>(e.ids.size()) > c.shard_tokens)) {
          close_shard();
        }
        if (!writer) {
          const int k = shard_count[s]++;
          const std::string bin = shard_name(j.split, k, "bin"), idx = shard_name(j.split, k, "idx");
          writer = std::make_unique<ShardWriter>((out / bin).string(), (out / idx).string(),
                                                 dtype_bytes, vocab);
          writer_split = j.split;
          shards.push_back({{"split", split_name(j.split)}, {"bin", bin}, {"index", idx}});
        }
        docs.push_back({{"name", j.source->name},
                        {"split", split_name(j.split)},
                        {"shard", shards.size() - 1},
                        {"tokens", e.ids.size()},
                        {"bytes", e.text_bytes}});
        writer->add_document(e.ids);
        doc_tokens[s].push_back(static_cast<int64_t>(e.ids.size()));
        split_bytes[s] += e.text_bytes;
      });
  close_shard();
  const double encode_s = seconds_since(t_enc);
  MOBA_CHECK(!docs.empty(), "no text documents in the input: ", jobs.size(), " files, ",
             skipped_binary, " binary, ", skipped_empty, " empty");

  std::vector<int64_t> all = doc_tokens[0];
  all.insert(all.end(), doc_tokens[1].begin(), doc_tokens[1].end());
  const TokenStats st_all = TokenStats::of(all, split_bytes[0] + split_bytes[1]);
  const double total_s = seconds_since(t_start);
  nlohmann::json m = {
      {"format", "moba-data"},
      {"version", kFormatVersion},
      {"created_by", "moba " + moba::version()},
      {"config", c.to_json()},
      {"tokenizer", tok_json},
      {"vocab_size", vocab},
      {"dtype", dtype_bytes == 2 ? "uint16" : "uint32"},
      {"split", {{"val_fraction", c.val_fraction},
                 {"rule", "val iff top 53 bits of splitmix64(fnv1a64(name)) / 2^53 < val_fraction"}}},
      {"input", {{"files", jobs.size()},
                 {"bytes", input_bytes},
                 {"documents", docs.size()},
                 {"skipped_binary", skipped_binary},
                 {"skipped_empty", skipped_empty},
                 {"skipped", skipped},
                 {"invalid_utf8_replaced", invalid_utf8},
                 {"documents_with_invalid_utf8", docs_invalid},
                 {"line_ends_fixed", line_ends},
                 {"gutenberg_headers_stripped", pg_header},
                 {"gutenberg_footers_stripped", pg_footer}}},
      {"stats", {{"all", st_all.to_json()},
                 {"train", TokenStats::of(doc_tokens[0], split_bytes[0]).to_json()},
                 {"val", TokenStats::of(doc_tokens[1], split_bytes[1]).to_json()}}},
      {"timing", {{"seconds_total", total_s},
                  {"seconds_tokenizer", tokenizer_s},
                  {"seconds_encode", encode_s},
                  {"encode_mb_per_s", input_bytes / 1e6 / std::max(1e-9, encode_s)},
                  {"overall_mb_per_s", input_bytes / 1e6 / std::max(1e-9, total_s)}}},
      {"shards", shards},
      {"documents", docs}};
  // The manifest is written last and atomically: a folder with a manifest is complete.
  write_file_atomic((out / "manifest.json").string(), m.dump(1) + "\n");
  swap.commit();

  if (log) {
    const auto row = [&](const char* name, const TokenStats& s) {
      std::fprintf(log, "| %s | %lld | %lld | %.1f | %lld | %.0f | %lld | %lld | %lld | %lld |\n",
                   name, static_cast<long long>(s.documents), static_cast<long long>(s.tokens),
                   s.bytes / 1e6, static_cast<long long>(s.min_tokens), s.median_tokens,
                   static_cast<long long>(s.max_tokens), static_cast<long long>(s.reaching[0]),
                   static_cast<long long>(s.reaching[1]), static_cast<long long>(s.reaching[2]));
    };
    std::fprintf(log, "\n| split | documents | tokens | MB | min | median | max | >=4K | >=8K | >=32K |\n"
                      "|---|---|---|---|---|---|---|---|---|---|\n");
    row("train", TokenStats::of(doc_tokens[0], split_bytes[0]));
    row("val", TokenStats::of(doc_tokens[1], split_bytes[1]));
    row("all", st_all);
    std::fprintf(log, "\n%lld files (%.1f MB): %lld binary and %lld empty skipped, %lld invalid "
                 "UTF-8 sequences replaced, %lld Gutenberg headers / %lld footers stripped\n",
                 static_cast<long long>(jobs.size()), input_bytes / 1e6,
                 static_cast<long long>(skipped_binary), static_cast<long long>(skipped_empty),
                 static_cast<long long>(invalid_utf8), static_cast<long long>(pg_header),
                 static_cast<long long>(pg_footer));
    std::fprintf(log, "%s tokenizer, vocabulary %lld, %s ids; tokenizer %.1f s, encode %.1f s "
                 "(%.1f MB/s), total %.1f s (%.1f MB/s) -> %s\n",
                 tok->kind().c_str(), static_cast<long long>(vocab), dtype_bytes == 2 ? "uint16" : "uint32",
                 tokenizer_s, encode_s, input_bytes / 1e6 / std::max(1e-9, encode_s), total_s,
                 input_bytes / 1e6 / std::max(1e-9, total_s), c.out_dir.c_str());
  }
  return m;
}

}  // namespace moba::data
