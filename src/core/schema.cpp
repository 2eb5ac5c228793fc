#include "core/schema.h"

#include <charconv>

namespace moba::schema {
namespace {

std::string number_text(double x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  std::string s(buf, end);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // a TOML float, not an integer
  return s;
}

// A TOML basic string: quotes, backslashes and control characters escaped.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

template <class T, class F>
std::string list(const std::vector<T>& xs, F one) {
  std::string s = "[";
  for (size_t i = 0; i < xs.size(); ++i) s += (i ? ", " : "") + one(xs[i]);
  return s + "]";
}

}  // namespace

std::string format(const Value& v) {
  switch (static_cast<Type>(v.index())) {
    case Type::integer:
      return std::to_string(std::get<int64_t>(v));
    case Type::number:
      return number_text(std::get<double>(v));
    case Type::boolean:
      return std::get<bool>(v) ? "true" : "false";
    case Type::text:
      return quoted(std::get<std::string>(v));
    case Type::integers:
      return list(std::get<std::vector<int64_t>>(v), [](int64_t x) { return std::to_string(x); });
    case Type::numbers:
      return list(std::get<std::vector<double>>(v), number_text);
    case Type::texts:
      return list(std::get<std::vector<std::string>>(v), quoted);
    case Type::booleans:
      return list(std::get<std::vector<bool>>(v),
                  [](bool b) { return std::string(b ? "true" : "false"); });
  }
  return "?";
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string closest(const std::string& key, const std::vector<std::string>& known) {
  auto last = [](const std::string& k) { return k.substr(k.rfind('.') + 1); };
  std::string best;
  size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;  // farther than this: no suggestion
  for (const std::string& k : known) {
    // "width" for "model.width", "base.model.width" for "model.width".
    const bool same_leaf = last(k) == last(key) &&
                           (k.size() >= key.size() ? k.ends_with("." + key) || key.find('.') == std::string::npos
                                                   : key.ends_with("." + k));
    const size_t d = same_leaf ? 0 : edit_distance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  return best;
}

}  // namespace moba::schema
