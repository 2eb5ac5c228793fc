// Generated corpora and temporary folders for the data tests: every test writes fresh
// random documents (the seed is printed by the test on failure) into its own folder.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace moba::test {

// A fresh seed per run; tests SCOPED_TRACE it so a failure can be replayed.
inline uint64_t fresh_seed() { return (uint64_t{std::random_device{}()} << 32) | std::random_device{}(); }

// A folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::mt19937_64 g(fresh_seed());
    path_ = std::filesystem::temp_directory_path() / ("moba-data-test-" + std::to_string(g()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string str(const std::string& sub = "") const { return (path_ / sub).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << bytes;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// English-looking text of about `bytes` bytes: random words from a small list, lines of
// 5..14 words, blank lines between paragraphs, sometimes non-ASCII words.
inline std::string random_text(std::mt19937_64& g, size_t bytes) {
  static const std::vector<std::string> words = {
      "the", "of", "and", "to", "in", "a", "was", "he", "that", "it", "his", "her", "with",
      "said", "had", "for", "you", "not", "as", "on", "but", "she", "at", "be", "him", "they",
      "from", "house", "night", "letter", "river", "captain", "morning", "window", "silence",
      "garden", "road", "1848", "42,", "again.", "Mr.", "\"Well,\"", "caf\xC3\xA9", "na\xC3\xAFve",
      "\xE2\x80\x94", "\xE2\x80\x9Cyes\xE2\x80\x9D"};
  std::string s;
  while (s.size() < bytes) {
    const int n = 5 + static_cast<int>(g() % 10);
    for (int i = 0; i < n; ++i) {
      if (i) s += ' ';
      s += words[g() % words.size()];
    }
    s += g() % 6 == 0 ? "\n\n" : "\n";
  }
  return s;
}

}  // namespace moba::test
