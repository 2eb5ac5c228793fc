// Cleaning: UTF-8 repair, line ends, Gutenberg stripping, binary and empty documents.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "data/text.h"
#include "data_fixtures.h"

namespace moba::data {
namespace {

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

std::string fix(const std::string& s, int64_t* n = nullptr) {
  std::string out;
  const int64_t k = append_valid_utf8(s, out);
  if (n) *n = k;
  return out;
}

TEST(Utf8, ValidTextIsUnchanged) {
  const std::string s = "plain ASCII, caf\xC3\xA9, \xE2\x80\x94 dash, \xF0\x9F\x98\x80 emoji, "
                        "\xF4\x8F\xBF\xBF max";
  int64_t n = -1;
  EXPECT_EQ(fix(s, &n), s);
  EXPECT_EQ(n, 0);
}

TEST(Utf8, InvalidSequencesAreReplacedOncePerMaximalSubpart) {
  int64_t n = 0;
  EXPECT_EQ(fix("a\xFF" "b", &n), "a" + R + "b");                    // never a lead byte
  EXPECT_EQ(n, 1);
  EXPECT_EQ(fix("\xE2\x82" "a", &n), R + "a");                       // truncated 3-byte
  EXPECT_EQ(n, 1);
  EXPECT_EQ(fix("\xC0\xAF", &n), R + R);                             // overlong '/'
  EXPECT_EQ(n, 2);
  EXPECT_EQ(fix("\xED\xA0\x80", &n), R + R + R);                     // surrogate D800
  EXPECT_EQ(n, 3);
  EXPECT_EQ(fix("\xF4\x90\x80\x80", &n), R + R + R + R);             // above U+10FFFF
  EXPECT_EQ(n, 4);
  EXPECT_EQ(fix("x\xF0\x9F\x98", &n), "x" + R);                      // truncated at the end
  EXPECT_EQ(n, 1);
  EXPECT_EQ(fix("\x80\x80", &n), R + R);                             // lone continuations
  EXPECT_EQ(n, 2);
}

TEST(Utf8, RandomBytesAlwaysGiveValidUtf8) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  for (int rep = 0; rep < 200; ++rep) {
    std::string s(1 + g() % 64, '\0');
    for (char& c : s) c = static_cast<char>(g());
    const std::string out = fix(s);
    std::string again;
    EXPECT_EQ(append_valid_utf8(out, again), 0) << "output is not valid UTF-8";
    EXPECT_EQ(again, out);
  }
}

TEST(LineEnds, CrLfAndLoneCrBecomeLf) {
  std::string s = "a\r\nb\rc\n\r\nd\r";
  EXPECT_EQ(normalize_line_ends(s), 4);
  EXPECT_EQ(s, "a\nb\nc\n\nd\n");
}

TEST(Gutenberg, StripsBetweenMarkers) {
  const std::string t =
      "The Project Gutenberg EBook of X\nlicence text\n"
      "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nChapter 1\nBody.\n\n"
      "End of the Project Gutenberg EBook of X\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence\n";
  bool h = false, f = false;
  EXPECT_EQ(strip_gutenberg(t, &h, &f), "\nChapter 1\nBody.\n\n");
  EXPECT_TRUE(h);
  EXPECT_TRUE(f);
}

TEST(Gutenberg, OldSmallPrintHeaderAndMissingMarkers) {
  bool h = false, f = false;
  const std::string old = "blah\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nText\n";
  EXPECT_EQ(strip_gutenberg(old, &h, &f), "Text\n");
  EXPECT_TRUE(h);
  EXPECT_FALSE(f);
  const std::string old_footer = "Text\nmore\nEnd Project Gutenberg's Treasury\nlicence\n";
  EXPECT_EQ(strip_gutenberg(old_footer, &h, &f), "Text\nmore\n");
  EXPECT_FALSE(h);
  EXPECT_TRUE(f);
  const std::string none = "Just a text\nwith no markers\nThe end of Project Gutenberg is near\n";
  EXPECT_EQ(strip_gutenberg(none, &h, &f), none);
  EXPECT_FALSE(h);
  EXPECT_FALSE(f);
}

TEST(CleanDocument, AppliesEveryRule) {
  CleanOptions o;
  o.strip_gutenberg = true;
  const std::string raw = "\xEF\xBB\xBFheader\r\n*** START OF THE PROJECT GUTENBERG EBOOK Y ***\r\n"
                          "\r\n  \r\nHello\xFFworld\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK Y ***\r\n";
  const CleanResult r = clean_document(raw, o);
  EXPECT_FALSE(r.binary);
  EXPECT_EQ(r.text, "Hello" + R + "world\n");
  EXPECT_EQ(r.invalid_utf8, 1);
  EXPECT_EQ(r.line_ends_fixed, 7);
  EXPECT_TRUE(r.gutenberg_header);
  EXPECT_TRUE(r.gutenberg_footer);
  // Without the option the markers stay.
  EXPECT_NE(clean_document(raw, {}).text.find("START OF THE PROJECT"), std::string::npos);
}

TEST(CleanDocument, BinaryAndEmpty) {
  EXPECT_TRUE(clean_document(std::string("GIF89a\0\0\x01", 9), {}).binary);
  EXPECT_TRUE(looks_binary(std::string("abc\0", 4)));
  EXPECT_FALSE(looks_binary(std::string(9000, 'a') + std::string(1, '\0')));  // past 8000
  const CleanResult e = clean_document(" \r\n\t\n\n", {});
  EXPECT_FALSE(e.binary);
  EXPECT_TRUE(e.text.empty());
}

}  // namespace
}  // namespace moba::data
