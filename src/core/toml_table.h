// Reading TOML configuration files (toml++) with errors that name the file, the key and
// the line: one reader for every config format of the project (moba train's run configs,
// moba sweep's presets). Header-only; a target that includes it links moba_tomlplusplus.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace moba {

// Parses TOML text; a syntax error is a moba::Error "ORIGIN: TOML syntax error at line L,
// column C: ...".
inline toml::table parse_toml(const std::string& text, const std::string& origin) {
  try {
    return toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    MOBA_CHECK(false, origin, ": TOML syntax error at line ", e.source().begin.line, ", column ",
               e.source().begin.column, ": ", e.description());
  }
}

// The sub-table [name] of root, or nullptr when absent; an error when `name` is not a table.
inline const toml::table* toml_subtable(const toml::table& root, const char* name,
                                        const std::string& origin) {
  const toml::node* n = root.get(name);
  if (!n) return nullptr;
  MOBA_CHECK(n->is_table(), origin, ": '", name, "' must be a table ([", name, "])");
  return n->as_table();
}

// Reads the keys of one table (absent keys keep the caller's default), remembering which
// it was asked for, so that finish() can reject the rest as unknown. `prefix` is the
// table's name as the user writes it ("model."); `docs` names the page listing the keys.
class TomlTable {
 public:
  TomlTable(const toml::table* t, std::string origin, std::string prefix, std::string docs)
      : t_(t), origin_(std::move(origin)), prefix_(std::move(prefix)), docs_(std::move(docs)) {}

  void get(const char* key, int64_t& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value_exact<int64_t>();
      if (!v) fail(key, "an integer", *n);
      out = *v;
    }
  }
  void get(const char* key, uint64_t& out) {
    int64_t v = static_cast<int64_t>(out);
    get(key, v);
    MOBA_CHECK(v >= 0, origin_, ": ", prefix_, key, " must be >= 0, got ", v);
    out = static_cast<uint64_t>(v);
  }
  void get(const char* key, double& out) {
    if (const toml::node* n = find(key)) {
      if (n->is_floating_point())
        out = *n->value<double>();
      else if (n->is_integer())
        out = static_cast<double>(*n->value<int64_t>());
      else
        fail(key, "a number", *n);
    }
  }
  void get(const char* key, bool& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value_exact<bool>();
      if (!v) fail(key, "true or false", *n);
      out = *v;
    }
  }
  void get(const char* key, std::string& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value_exact<std::string>();
      if (!v) fail(key, "a string", *n);
      out = *v;
    }
  }
  // An array of strings, integers or numbers (integers accepted as numbers).
  template <typename T>
  void get_list(const char* key, std::vector<T>& out) {
    const toml::node* n = find(key);
    if (!n) return;
    const toml::array* a = n->as_array();
    if (!a) fail(key, "an array", *n);
    out.clear();
    for (const toml::node& e : *a) {
      if constexpr (std::is_same_v<T, std::string>) {
        auto v = e.value_exact<std::string>();
        if (!v) fail(key, "an array of strings", e);
        out.push_back(*v);
      } else if constexpr (std::is_same_v<T, int64_t>) {
        auto v = e.value_exact<int64_t>();
        if (!v) fail(key, "an array of integers", e);
        out.push_back(*v);
      } else {
        auto v = e.value<double>();
        if (!v || !(e.is_integer() || e.is_floating_point())) fail(key, "an array of numbers", e);
        out.push_back(*v);
      }
    }
  }
  // Keys read elsewhere (sub-tables, read by their own TomlTable): known, not read here.
  void allow(const char* key) { known_.insert(key); }

  // Rejects every key of the table that was neither read nor allowed.
  void finish() const {
    if (!t_) return;
    for (const auto& [k, v] : *t_)
      MOBA_CHECK(known_.count(std::string(k.str())), origin_, ": unknown key '", prefix_, k.str(),
                 "' (line ", k.source().begin.line, "); see ", docs_, " for the keys");
  }

 private:
  const toml::node* find(const char* key) {
    known_.insert(key);
    return t_ ? t_->get(key) : nullptr;
  }
  [[noreturn]] void fail(const char* key, const char* want, const toml::node& n) const {
    std::ostringstream got;
    got << n.type();
    MOBA_CHECK(false, origin_, ": ", prefix_, key, " must be ", want, ", got a ", got.str(),
               " (line ", n.source().begin.line, ")");
  }

  const toml::table* t_;
  std::string origin_, prefix_, docs_;
  std::set<std::string> known_;
};

}  // namespace moba
