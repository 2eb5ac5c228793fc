// Turning a file's bytes into a document's text: the rules `moba prepare` applies to every
// input file before tokenization (docs/data.md, "Cleaning").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moba::data {

struct CleanOptions {
  bool strip_gutenberg = false;  // drop the Project Gutenberg header and footer (as PG-19)
};

struct CleanResult {
  std::string text;              // valid UTF-8, '\n' line ends; empty if binary
  bool binary = false;           // not a text document: skipped
  int64_t invalid_utf8 = 0;      // invalid UTF-8 sequences replaced by U+FFFD
  int64_t line_ends_fixed = 0;   // "\r\n" and lone '\r' turned into '\n'
  bool gutenberg_header = false; // a PG header was found and removed
  bool gutenberg_footer = false; // a PG footer was found and removed
};

// A file is binary when a NUL byte occurs in its first 8000 bytes (git's and grep's
// rule): text in any ASCII-compatible encoding has none, and almost every binary format
// (images, archives, compiled code, UTF-16) has one there.
bool looks_binary(std::string_view raw);

// Appends `in` to `out` with every invalid UTF-8 sequence replaced by U+FFFD, one per
// maximal invalid subpart (Unicode's recommended practice: "\xE2\x82" followed by 'a'
// is one replacement, then 'a'). Overlong forms, surrogates and code points above
// U+10FFFF are invalid. Returns the number of replacements.
int64_t append_valid_utf8(std::string_view in, std::string& out);

// Replaces "\r\n" and lone '\r' with '\n' in place; returns the number replaced.
int64_t normalize_line_ends(std::string& text);

// The text between the Project Gutenberg header and footer, or `text` itself where a
// marker is missing. Header: the first line starting with "***" that holds "START OF"
// and "PROJECT GUTENBERG", or the old "*END*THE SMALL PRINT!...*END*" line; the text
// starts after it. Footer: the first later line starting with "*** END OF ... PROJECT
// GUTENBERG", "End of [the|this] Project Gutenberg" or "End Project Gutenberg"; the text
// stops before it. Case is ignored; `text` must have '\n' line ends.
std::string_view strip_gutenberg(std::string_view text, bool* header_found, bool* footer_found);

// The whole cleaning of one file: binary test, UTF-8 repair (a leading byte-order mark is
// dropped), line ends, optional Gutenberg stripping, then leading blank lines and
// trailing white space removed. A text that is empty after this is an empty document.
CleanResult clean_document(std::string_view raw, const CleanOptions& options);

}  // namespace moba::data
