#include "data/text.h"

#include <algorithm>
#include <cctype>

namespace moba::data {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid; *valid_prefix gets
// the length of its maximal valid subpart (>= 1: at least the lead byte is consumed).
int utf8_sequence(const unsigned char* p, size_t n, size_t* valid_prefix) {
  const unsigned char c = p[0];
  int len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c < 0x80) {
    *valid_prefix = 1;
    return 1;
  } else if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;   // no overlong 3-byte forms
    if (c == 0xED) hi = 0x9F;   // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;   // no overlong 4-byte forms
    if (c == 0xF4) hi = 0x8F;   // nothing above U+10FFFF
  } else {
    *valid_prefix = 1;          // 0x80..0xC1, 0xF5..0xFF never start a sequence
    return 0;
  }
  size_t i = 1;
  if (i < n && p[i] >= lo && p[i] <= hi) {
    ++i;
    while (i < static_cast<size_t>(len) && i < n && is_cont(p[i])) ++i;
  }
  *valid_prefix = i;
  return i == static_cast<size_t>(len) ? len : 0;
}

std::string upper_trimmed(std::string_view line) {
  size_t b = 0;
  while (b < line.size() && (line[b] == ' ' || line[b] == '\t')) ++b;
  std::string s(line.substr(b));
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool starts_with(const std::string& s, std::string_view p) { return s.rfind(p, 0) == 0; }
bool contains(const std::string& s, std::string_view p) { return s.find(p) != std::string::npos; }

bool is_header_line(std::string_view line) {
  const std::string u = upper_trimmed(line);
  if (starts_with(u, "***") && contains(u, "START OF") && contains(u, "PROJECT GUTENBERG"))
    return true;
  return starts_with(u, "*END") && contains(u, "SMALL PRINT");
}

bool is_footer_line(std::string_view line) {
  const std::string u = upper_trimmed(line);
  if (starts_with(u, "***") && contains(u, "END OF") && contains(u, "PROJECT GUTENBERG"))
    return true;
  for (std::string_view p : {"END OF THE PROJECT GUTENBERG", "END OF THIS PROJECT GUTENBERG",
                             "END OF PROJECT GUTENBERG", "END PROJECT GUTENBERG"})
    if (starts_with(u, p)) return true;
  return false;
}

}  // namespace

bool looks_binary(std::string_view raw) {
  return raw.substr(0, 8000).find('\0') != std::string_view::npos;
}

int64_t append_valid_utf8(std::string_view in, std::string& out) {
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  int64_t replaced = 0;
  size_t i = 0;
  out.reserve(out.size() + n);
  while (i < n) {
    size_t run = i;  // copy ASCII runs in one go
    while (run < n && p[run] < 0x80) ++run;
    out.append(in.data() + i, run - i);
    i = run;
    if (i >= n) break;
    size_t prefix = 0;
    const int len = utf8_sequence(p + i, n - i, &prefix);
    if (len > 0) {
      out.append(in.data() + i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    } else {
      out.append(kReplacement);
      ++replaced;
      i += prefix;
    }
  }
  return replaced;
}

int64_t normalize_line_ends(std::string& text) {
  if (text.find('\r') == std::string::npos) return 0;
  int64_t fixed = 0;
  size_t w = 0;
  for (size_t r = 0; r < text.size(); ++r) {
    if (text[r] == '\r') {
      text[w++] = '\n';
      ++fixed;
      if (r + 1 < text.size() && text[r + 1] == '\n') ++r;
    } else {
      text[w++] = text[r];
    }
  }
  text.resize(w);
  return fixed;
}

std::string_view strip_gutenberg(std::string_view text, bool* header_found, bool* footer_found) {
  *header_found = *footer_found = false;
  size_t begin = 0, end = text.size();
  size_t pos = 0;
  while (pos < text.size()) {  // header: the first marker line
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    if (is_header_line(text.substr(pos, eol - pos))) {
      begin = std::min(eol + 1, text.size());
      *header_found = true;
      break;
    }
    pos = eol + 1;
  }
  pos = begin;
  while (pos < text.size()) {  // footer: the first marker line after the header
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    if (is_footer_line(text.substr(pos, eol - pos))) {
      end = pos;
      *footer_found = true;
      break;
    }
    pos = eol + 1;
  }
  return text.substr(begin, end - begin);
}

CleanResult clean_document(std::string_view raw, const CleanOptions& options) {
  CleanResult r;
  if (looks_binary(raw)) {
    r.binary = true;
    return r;
  }
  if (raw.substr(0, 3) == "\xEF\xBB\xBF") raw.remove_prefix(3);  // byte-order mark
  std::string text;
  r.invalid_utf8 = append_valid_utf8(raw, text);
  r.line_ends_fixed = normalize_line_ends(text);
  std::string_view body = text;
  if (options.strip_gutenberg) body = strip_gutenberg(body, &r.gutenberg_header, &r.gutenberg_footer);
  // Leading blank lines and trailing white space carry no text.
  size_t b = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '\n') b = i + 1;
    else if (c != ' ' && c != '\t') break;
  }
  size_t e = body.size();
  while (e > b && std::isspace(static_cast<unsigned char>(body[e - 1]))) --e;
  if (b >= e) return r;  // empty document
  r.text.assign(body.substr(b, e - b));
  r.text.push_back('\n');  // every document ends with one newline
  return r;
}

}  // namespace moba::data
