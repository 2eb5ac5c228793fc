// A configuration schema: every key of a configuration declared once (its dotted TOML key,
// the struct member it fills, its type, its allowed range, one line of documentation), and
// what is derived from that list: range checks, comparison, a diff naming the keys that
// differ, "did you mean" for a mistyped key, and the text of values. Reading and writing
// TOML, JSON and the docs' tables are in core/schema_io.h.
//
// A field is made from an accessor lambda, `[](auto& c) -> auto& { return c.model.width; }`
// (MOBA_FIELD below), so one line names the key and the member; its type follows from the
// member's. Checks that relate several keys (heads a multiple of kv_heads, ...) stay with the
// configuration's own validate(); a field's own range is checked here, once, where it enters.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "core/error.h"

namespace moba::schema {

// The types a key can have; Value's alternatives in the same order.
enum class Type { integer, number, boolean, text, integers, numbers, texts, booleans };
using Value = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>,
                           std::vector<double>, std::vector<std::string>, std::vector<bool>>;

inline const char* type_name(Type t) {
  constexpr const char* names[] = {"an integer",           "a number",
                                   "true or false",        "a string",
                                   "an array of integers", "an array of numbers",
                                   "an array of strings",  "an array of true or false"};
  return names[static_cast<int>(t)];
}

// The allowed values of a number (of each element of a list): lo..hi, either end open,
// optionally also 0 meaning "automatic"; for a string, whether it may be empty. Values are
// always finite.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
  bool zero_auto = false;  // 0 is also allowed (it means "automatic")
  bool nonempty = false;   // strings and lists: must not be empty

  bool contains(double x) const {
    if (!std::isfinite(x)) return false;
    if (zero_auto && x == 0.0) return true;
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  std::string text() const {
    std::string s;
    const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
    if (has_lo && has_hi)
      s = std::string("in ") + (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) +
          (hi_open ? ")" : "]");
    else if (has_lo)
      s = (lo_open ? "> " : ">= ") + num(lo);
    else if (has_hi)
      s = (hi_open ? "< " : "<= ") + num(hi);
    if (zero_auto) s = "0 (automatic) or " + s;
    if (nonempty) s = s.empty() ? "not empty" : "not empty, " + s;
    return s;
  }
  static std::string num(double x) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", x);
    return b;
  }
};

inline Range any() { return {}; }
inline Range at_least(double lo) { return Range{.lo = lo}; }
inline Range above(double lo) { return Range{.lo = lo, .lo_open = true}; }
// lo..hi; `ends` says which ends are closed: "[]", "[)", "(]", "()".
inline Range within(double lo, double hi, const char* ends = "[]") {
  return Range{.lo = lo, .hi = hi, .lo_open = ends[0] == '(', .hi_open = ends[1] == ')'};
}
inline Range or_auto(Range r) {
  r.zero_auto = true;
  return r;
}
inline Range nonempty(Range r = {}) {
  r.nonempty = true;
  return r;
}

// A value as TOML writes it: 12, 0.5, 1e-05 -> 1.0000000000000001e-05 (shortest text that
// reads back as the same double, always with a '.' or exponent), true, "text", [1, 2].
std::string format(const Value& v);

template <class Root>
struct Field {
  std::string key;  // dotted: "model.width"; the last part is the TOML key, the rest its table
  Type type = Type::integer;
  Range range;
  std::vector<std::string> choices;  // strings: the allowed values (empty: any)
  std::string doc;                   // one line for the docs' table
  std::function<Value(const Root&)> get;
  std::function<void(Root&, const Value&)> set;

  // "" when `v` (of this field's type) is allowed, else the reason.
  std::string check(const Value& v) const;
};

namespace detail {
template <class M>
constexpr Type type_of() {
  if constexpr (std::is_same_v<M, bool>) return Type::boolean;
  else if constexpr (std::is_integral_v<M>) return Type::integer;
  else if constexpr (std::is_floating_point_v<M>) return Type::number;
  else if constexpr (std::is_same_v<M, std::string>) return Type::text;
  else if constexpr (std::is_same_v<M, std::vector<int64_t>>) return Type::integers;
  else if constexpr (std::is_same_v<M, std::vector<double>>) return Type::numbers;
  else if constexpr (std::is_same_v<M, std::vector<bool>>) return Type::booleans;
  else {
    static_assert(std::is_same_v<M, std::vector<std::string>>, "no schema type for this member");
    return Type::texts;
  }
}
}  // namespace detail

// A field for the member `at(root)` returns (a reference).
template <class Root, class Access>
Field<Root> field(std::string key, Access at, Range range, std::string doc,
                  std::vector<std::string> choices = {}) {
  using M = std::remove_cvref_t<decltype(at(std::declval<Root&>()))>;
  Field<Root> f;
  f.key = std::move(key);
  f.type = detail::type_of<M>();
  f.range = range;
  f.doc = std::move(doc);
  f.choices = std::move(choices);
  f.get = [at](const Root& r) -> Value {
    const M& m = at(const_cast<Root&>(r));  // read only
    if constexpr (std::is_integral_v<M> && !std::is_same_v<M, bool>) return static_cast<int64_t>(m);
    else return m;
  };
  f.set = [at](Root& r, const Value& v) {
    if constexpr (std::is_integral_v<M> && !std::is_same_v<M, bool>)
      at(r) = static_cast<M>(std::get<int64_t>(v));
    else
      at(r) = std::get<M>(v);
  };
  return f;
}

// An enum member read and written through its names: `names` pairs each value with its
// string (the one table of the enum's spellings).
template <class Root, class E, size_t N, class Access>
Field<Root> enum_field(std::string key, Access at, const std::pair<E, const char*> (&names)[N],
                       std::string doc) {
  Field<Root> f;
  f.key = std::move(key);
  f.type = Type::text;
  f.doc = std::move(doc);
  for (const auto& [e, name] : names) f.choices.push_back(name);
  const std::span<const std::pair<E, const char*>> table(names);
  f.get = [at, table](const Root& r) -> Value {
    const E e = at(const_cast<Root&>(r));
    for (const auto& [v, name] : table)
      if (v == e) return std::string(name);
    return std::string("?");
  };
  f.set = [at, table](Root& r, const Value& v) {
    for (const auto& [e, name] : table)
      if (std::get<std::string>(v) == name) at(r) = e;
  };
  return f;
}

// The fields of a sub-configuration (`at(root)` returns it), their keys prefixed.
template <class Root, class Sub, class Access>
void embed(std::vector<Field<Root>>& out, const std::vector<Field<Sub>>& sub,
           const std::string& prefix, Access at) {
  for (const Field<Sub>& s : sub) {
    Field<Root> f;
    f.key = prefix + s.key;
    f.type = s.type;
    f.range = s.range;
    f.choices = s.choices;
    f.doc = s.doc;
    f.get = [at, g = s.get](const Root& r) { return g(at(const_cast<Root&>(r))); };
    f.set = [at, st = s.set](Root& r, const Value& v) { st(at(r), v); };
    out.push_back(std::move(f));
  }
}

// Edit distance, for suggestions.
size_t edit_distance(const std::string& a, const std::string& b);
// The known key closest to `key` ("" when none is close): same last part, or a few edits.
std::string closest(const std::string& key, const std::vector<std::string>& known);

// A configuration type's fields, in the order its TOML text lists them.
template <class Root>
class Schema {
 public:
  Schema(std::vector<Field<Root>> fields, std::string docs)
      : fields_(std::move(fields)), docs_(std::move(docs)) {}

  const std::vector<Field<Root>>& fields() const { return fields_; }
  const std::string& docs() const { return docs_; }  // the page that lists the keys

  const Field<Root>* find(const std::string& key) const {
    for (const Field<Root>& f : fields_)
      if (f.key == key) return &f;
    return nullptr;
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    for (const Field<Root>& f : fields_) k.push_back(f.key);
    return k;
  }
  // "unknown key 'x' (did you mean 'y'?); see DOCS for the keys"
  std::string unknown(const std::string& key) const {
    const std::string near = closest(key, keys());
    return "unknown key '" + key + "'" + (near.empty() ? "" : " (did you mean '" + near + "'?)") +
           "; see " + docs_ + " for the keys";
  }

  // Throws moba::Error "KEY must be RANGE, got VALUE" for the first field out of range.
  void check_ranges(const Root& r) const {
    for (const Field<Root>& f : fields_) {
      const std::string why = f.check(f.get(r));
      MOBA_CHECK(why.empty(), f.key, " ", why);
    }
  }
  // The keys whose values differ, as "key: A -> B".
  std::vector<std::string> diff(const Root& a, const Root& b) const {
    std::vector<std::string> d;
    for (const Field<Root>& f : fields_) {
      const Value x = f.get(a), y = f.get(b);
      if (x != y) d.push_back(f.key + ": " + format(x) + " -> " + format(y));
    }
    return d;
  }
  bool equal(const Root& a, const Root& b) const { return diff(a, b).empty(); }

 private:
  std::vector<Field<Root>> fields_;
  std::string docs_;
};

template <class Root>
std::string Field<Root>::check(const Value& v) const {
  auto bad = [&](const std::string& want) { return "must be " + want + ", got " + format(v); };
  auto in_range = [&](double x) { return range.contains(x); };
  switch (type) {
    case Type::integer:
      return in_range(static_cast<double>(std::get<int64_t>(v))) ? "" : bad(range.text());
    case Type::number:
      return in_range(std::get<double>(v)) ? "" : bad(range.text());
    case Type::boolean:
      return "";
    case Type::text: {
      const std::string& s = std::get<std::string>(v);
      if (range.nonempty && s.empty()) return "must not be empty";
      if (choices.empty() || std::find(choices.begin(), choices.end(), s) != choices.end())
        return "";
      std::string list;
      for (const std::string& c : choices) list += (list.empty() ? "\"" : " or \"") + c + "\"";
      return bad(list);
    }
    case Type::integers:
      for (int64_t x : std::get<std::vector<int64_t>>(v))
        if (!in_range(static_cast<double>(x))) return bad("a list of values " + range.text());
      break;
    case Type::numbers:
      for (double x : std::get<std::vector<double>>(v))
        if (!in_range(x)) return bad("a list of values " + range.text());
      break;
    case Type::texts:
      for (const std::string& s : std::get<std::vector<std::string>>(v))
        if (!choices.empty() && std::find(choices.begin(), choices.end(), s) == choices.end())
          return bad("a list of \"" + [&] {
            std::string l;
            for (const std::string& c : choices) l += (l.empty() ? "" : "\", \"") + c;
            return l;
          }() + "\"");
      break;
    case Type::booleans:
      break;
  }
  const bool empty = std::visit(
      [](const auto& x) {
        if constexpr (requires { x.empty(); }) return x.empty();
        else return false;
      },
      v);
  return range.nonempty && empty ? "must not be empty" : "";
}

}  // namespace moba::schema

// One line of a schema: MOBA_FIELD(RunConfig, "model.width", model.width, at_least(1), "C")
#define MOBA_FIELD(Root, key, member, ...) \
  ::moba::schema::field<Root>(key, [](auto& c_) -> auto& { return c_.member; }, __VA_ARGS__)
