// A schema's configurations as TOML (read, --set, write), JSON (run.json) and Markdown (the
// docs' tables): everything derived from the one list of fields in core/schema.h. Header
// only; a target that includes it links moba_tomlplusplus and nlohmann_json.
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/schema.h"
#include "core/toml_table.h"

namespace moba::schema {

// The value of `n` as type `t`; a moba::Error "ORIGIN: KEY must be TYPE, got a T (line L)"
// otherwise. Integers are accepted where numbers are asked for.
inline Value read_value(const toml::node& n, Type t, const std::string& key,
                        const std::string& origin) {
  auto fail = [&](const toml::node& at) {
    std::ostringstream got;
    got << at.type();
    MOBA_CHECK(false, origin, ": ", key, " must be ", type_name(t), ", got a ", got.str(),
               at.source().begin.line ? " (line " + std::to_string(at.source().begin.line) + ")"
                                      : std::string());
  };
  auto number = [&](const toml::node& e) -> double {
    if (e.is_floating_point()) return *e.value<double>();
    if (e.is_integer()) return static_cast<double>(*e.value<int64_t>());
    fail(e);
    return 0;
  };
  auto exact = [&]<class T>(const toml::node& e, T*) -> T {
    auto v = e.value_exact<T>();
    if (!v) fail(e);
    return *v;
  };
  switch (t) {
    case Type::integer:
      return exact(n, static_cast<int64_t*>(nullptr));
    case Type::number:
      return number(n);
    case Type::boolean:
      return exact(n, static_cast<bool*>(nullptr));
    case Type::text:
      return exact(n, static_cast<std::string*>(nullptr));
    default:
      break;
  }
  const toml::array* a = n.as_array();
  if (!a) fail(n);
  if (t == Type::integers) {
    std::vector<int64_t> out;
    for (const toml::node& e : *a) out.push_back(exact(e, static_cast<int64_t*>(nullptr)));
    return out;
  }
  if (t == Type::numbers) {
    std::vector<double> out;
    for (const toml::node& e : *a) out.push_back(number(e));
    return out;
  }
  if (t == Type::booleans) {
    std::vector<bool> out;
    for (const toml::node& e : *a) out.push_back(exact(e, static_cast<bool*>(nullptr)));
    return out;
  }
  std::vector<std::string> out;
  for (const toml::node& e : *a) out.push_back(exact(e, static_cast<std::string*>(nullptr)));
  return out;
}

// Sets `f` from a value read from ORIGIN, checking its range: "ORIGIN: KEY must be ...".
template <class Root>
void set_checked(const Field<Root>& f, Root& r, const Value& v, const std::string& origin) {
  const std::string why = f.check(v);
  MOBA_CHECK(why.empty(), origin, ": ", f.key, " ", why);
  f.set(r, v);
}

namespace detail {

// Walks `t` (the table at `prefix`), setting every known key and refusing the others.
template <class Root>
void read_table(const Schema<Root>& s, const toml::table& t, const std::string& prefix, Root& r,
                const std::string& origin, std::set<std::string>* given) {
  for (const auto& [k, node] : t) {
    const std::string key = prefix + std::string(k.str());
    if (const Field<Root>* f = s.find(key)) {
      set_checked(*f, r, read_value(node, f->type, key, origin), origin);
      if (given) given->insert(key);
      continue;
    }
    const bool is_section = std::any_of(s.fields().begin(), s.fields().end(), [&](const auto& f) {
      return f.key.starts_with(key + ".");
    });
    if (is_section) {
      MOBA_CHECK(node.is_table(), origin, ": '", key, "' must be a table ([", key, "])");
      read_table(s, *node.as_table(), key + ".", r, origin, given);
      continue;
    }
    MOBA_CHECK(false, origin, ": ", s.unknown(key), " (line ", k.source().begin.line, ")");
  }
}

}  // namespace detail

// Reads TOML text into `r` (keys absent keep r's values): unknown keys, wrong types and
// values out of range are errors naming ORIGIN, the key and the line. `given` collects the
// keys the text set.
template <class Root>
void parse(const Schema<Root>& s, const std::string& text, const std::string& origin, Root& r,
           std::set<std::string>* given = nullptr) {
  const toml::table root = parse_toml(text, origin);
  detail::read_table(s, root, "", r, origin, given);
}

// Applies one command-line override "key=value" (`--set model.width=512`). The value is
// TOML (512, 1e-3, true, "x", [2, 3]); a string may also be given bare (attention.kind=moba).
template <class Root>
void apply_set(const Schema<Root>& s, Root& r, const std::string& assignment,
               std::set<std::string>* given = nullptr) {
  const size_t eq = assignment.find('=');
  MOBA_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment,
             "': expected key=value (e.g. --set model.width=512)");
  std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  while (!key.empty() && key.back() == ' ') key.pop_back();
  const Field<Root>* f = s.find(key);
  MOBA_CHECK(f, "--set: ", s.unknown(key));
  const std::string origin = "--set " + key;
  toml::table t;
  bool parsed = true;
  try {
    t = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed = false;
  }
  if (f->type == Type::text && (!parsed || !t.get("v")->is_string())) {
    set_checked(*f, r, Value(value), origin);  // a bare string
  } else {
    MOBA_CHECK(parsed, origin, ": '", value, "' is not ", type_name(f->type));
    set_checked(*f, r, read_value(*t.get("v"), f->type, key, origin), origin);
  }
  if (given) given->insert(key);
}

// The configuration as TOML: top-level keys, then one [table] per section in the schema's
// order, every key written. parse(write(r)) gives r back.
template <class Root>
std::string write(const Schema<Root>& s, const Root& r, const std::string& header) {
  std::ostringstream os;
  os << header;
  std::string table = "";
  bool first = true;
  for (const Field<Root>& f : s.fields()) {
    const size_t dot = f.key.rfind('.');
    const std::string t = dot == std::string::npos ? "" : f.key.substr(0, dot);
    if (t != table || first) {
      if (!t.empty()) os << (first ? "" : "\n") << "[" << t << "]\n";
      table = t;
      first = false;
    }
    os << f.key.substr(dot + 1) << " = " << format(f.get(r)) << "\n";
  }
  return os.str();
}

inline nlohmann::json to_json(const Value& v) {
  return std::visit([](const auto& x) { return nlohmann::json(x); }, v);
}

// Every key as nested JSON objects ({"model": {"width": 256, ...}, ...}): run.json's "config".
template <class Root>
nlohmann::json to_json(const Schema<Root>& s, const Root& r) {
  nlohmann::json j = nlohmann::json::object();
  for (const Field<Root>& f : s.fields())
    j[nlohmann::json::json_pointer("/" + [&] {
      std::string p = f.key;
      std::replace(p.begin(), p.end(), '.', '/');
      return p;
    }())] = to_json(f.get(r));
  return j;
}

// The docs' table of every key whose name starts with `prefix` (all: ""), defaults from a
// default-constructed Root: | key | type | default | allowed | meaning |.
template <class Root>
std::string markdown(const Schema<Root>& s, const std::string& prefix = "",
                     const std::string& skip_prefix = "") {
  constexpr const char* kType[] = {"integer", "number", "bool", "string",
                                   "integers", "numbers", "strings", "bools"};
  const Root defaults{};
  std::ostringstream os;
  os << "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
  for (const Field<Root>& f : s.fields()) {
    if (!f.key.starts_with(prefix) || (!skip_prefix.empty() && f.key.starts_with(skip_prefix)))
      continue;
    std::string allowed = f.range.text();
    if (!f.choices.empty()) {
      allowed.clear();
      for (const std::string& c : f.choices) allowed += (allowed.empty() ? "" : ", ") + c;
    }
    std::string def = format(f.get(defaults));
    for (size_t i = 0; (i = def.find('|', i)) != std::string::npos; i += 2) def.replace(i, 1, "\\|");
    os << "| `" << f.key << "` | " << kType[static_cast<int>(f.type)] << " | `" << def << "` | "
       << allowed << " | " << f.doc << " |\n";
  }
  return os.str();
}

}  // namespace moba::schema
