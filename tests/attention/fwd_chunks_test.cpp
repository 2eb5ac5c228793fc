// The chunked MoBA forward's host side (attention/fwd_chunks.h): the chunks cover the
// tokens in order, none longer than asked, every boundary inside a sequence a multiple of
// max(S, 128) after its start; the chunk size from the option or the environment; and the
// forward's scratch, whose partials shrink from N to the chunk's tokens (issue 16's memory
// bar: at 32K, Hq 16, D 128, K 3 the unchunked partials are 512 MiB).
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "attention/fwd_chunks.h"
#include "core/error.h"
#include "scoped_env.h"

namespace moba::attn {
namespace {

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected moba::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

// Every property of a chunking; returns the chunks.
std::vector<std::pair<int64_t, int64_t>> check_chunks(const Layout& l, const MobaConfig& cfg,
                                                      int64_t C) {
  const auto ch = fwd_chunks(l, cfg, C);
  const int64_t G = fwd_chunk_granule(cfg);
  EXPECT_FALSE(ch.empty());
  int64_t at = 0;
  for (const auto& [a, z] : ch) {
    EXPECT_EQ(a, at) << "chunks must be contiguous";
    EXPECT_LT(a, z) << "empty chunk";
    if (C > 0) {
      EXPECT_LE(z - a, C) << "chunk longer than " << C;
    }
    // A boundary is a sequence start or a multiple of G after one.
    for (int64_t b = 0; b < l.batch(); ++b)
      if (l.seq_begin(b) < z && z < l.seq_begin(b) + l.seq_len(b)) {
        EXPECT_EQ((z - l.seq_begin(b)) % G, 0) << "boundary " << z << " inside sequence " << b;
      }
    at = z;
  }
  EXPECT_EQ(at, l.tokens());
  return ch;
}

TEST(FwdChunks, GranuleIsMaxOfBlockAnd128) {
  EXPECT_EQ(fwd_chunk_granule({64, 3}), 128);
  EXPECT_EQ(fwd_chunk_granule({128, 3}), 128);
  EXPECT_EQ(fwd_chunk_granule({512, 3}), 512);
}

TEST(FwdChunks, OffOrLargerThanTheBatchIsOnePass) {
  const Layout l = Layout::batched(1, 5000, 2, 1, 64);
  const MobaConfig cfg{512, 3};
  for (int64_t C : {int64_t{0}, int64_t{5120}, int64_t{1 << 20}}) {
    const auto ch = check_chunks(l, cfg, C);
    ASSERT_EQ(ch.size(), 1u) << C;
    EXPECT_EQ(ch[0], (std::pair<int64_t, int64_t>{0, 5000}));
  }
}

TEST(FwdChunks, OneSequenceSplitsAtMultiplesOfTheChunk) {
  const Layout l = Layout::batched(1, 5000, 2, 1, 64);
  const auto ch = check_chunks(l, {512, 3}, 2048);
  ASSERT_EQ(ch.size(), 3u);
  EXPECT_EQ(ch[0], (std::pair<int64_t, int64_t>{0, 2048}));
  EXPECT_EQ(ch[1], (std::pair<int64_t, int64_t>{2048, 4096}));
  EXPECT_EQ(ch[2], (std::pair<int64_t, int64_t>{4096, 5000}));
}

TEST(FwdChunks, VarlenBoundariesAlignInsideTheirSequence) {
  // Starts not multiples of 128: a boundary inside sequence 2 (start 1077) lies at 1077 +
  // a multiple of 256, and a chunk holds the end of one sequence and the start of another.
  const Layout l = Layout::varlen({0, 1, 78, 1077, 3000, 3001, 4500}, 2, 1, 64);
  for (int64_t S : {64, 128, 256}) {
    const int64_t G = fwd_chunk_granule({S, 3});
    for (int64_t C : {G, 2 * G, 3 * G, 8 * G, 16 * G, 40 * G}) {
      SCOPED_TRACE("S " + std::to_string(S) + " C " + std::to_string(C));
      check_chunks(l, {S, 3}, C);
    }
  }
  // C 512, G 256: the first chunk holds sequences 0 and 1 and sequence 2's first 256
  // tokens (78 + 256); then 512 tokens of sequence 2; then its last 231 and sequence 3's
  // first 256.
  const auto ch = fwd_chunks(l, {256, 3}, 512);
  ASSERT_GE(ch.size(), 3u);
  EXPECT_EQ(ch[0], (std::pair<int64_t, int64_t>{0, 334}));
  EXPECT_EQ(ch[1], (std::pair<int64_t, int64_t>{334, 846}));
  EXPECT_EQ(ch[2], (std::pair<int64_t, int64_t>{846, 1333}));
}

TEST(FwdChunks, RejectsSizesNotMultiplesOfTheGranule) {
  const Layout l = Layout::batched(1, 5000, 2, 1, 64);
  expect_error([&] { fwd_chunks(l, {512, 3}, 256); }, "multiple of max(block size, 128) = 512");
  expect_error([&] { fwd_chunks(l, {64, 3}, 64); }, "multiple of max(block size, 128) = 128");
  expect_error([&] { fwd_chunks(l, {64, 3}, -128); }, "positive multiple");
}

TEST(FwdChunks, ChunkSizeFromOptionOrEnvironment) {
  test::ScopedEnv env(kFwdChunkEnv, nullptr);  // unset; the caller's value comes back after
  Options opt;
  EXPECT_EQ(fwd_chunk_tokens(opt), 0) << "unset: unchunked";
  setenv(kFwdChunkEnv, "8192", 1);
  EXPECT_EQ(fwd_chunk_tokens(opt), 8192);
  opt.fwd_chunk_tokens = 0;
  EXPECT_EQ(fwd_chunk_tokens(opt), 0) << "the option wins over the environment";
  opt.fwd_chunk_tokens = 4096;
  EXPECT_EQ(fwd_chunk_tokens(opt), 4096);
  opt.fwd_chunk_tokens = -1;
  setenv(kFwdChunkEnv, "8k", 1);
  expect_error([&] { fwd_chunk_tokens(opt); }, "MOBA_FWD_CHUNK_TOKENS=8k");
  setenv(kFwdChunkEnv, "-512", 1);
  expect_error([&] { fwd_chunk_tokens(opt); }, ">= 0");
  opt.fwd_chunk_tokens = -2;
  expect_error([&] { fwd_chunk_tokens(opt); }, "fwd_chunk_tokens");
}

// Issue 16's case: 32K tokens, Hq 16, D 128, S 512, K 3. The partials shrink to the
// chunk's; the gather index is the whole batch's (built once for all chunks), its buckets
// and work list grow by a chunk's buckets (64 blocks x 16 kv heads) per extra chunk.
TEST(FwdChunks, ScratchAt32KShrinksToTheChunk) {
  const Layout l = Layout::batched(1, 32768, 16, 16, 128);
  const MobaConfig cfg{512, 3};
  constexpr int64_t MiB = 1 << 20;
  const FwdScratch whole = fwd_scratch_bytes(l, cfg, 0);
  EXPECT_EQ(whole.chunks, 1);
  EXPECT_EQ(whole.chunk_tokens, 32768);
  EXPECT_EQ(whole.part_o, 512 * MiB);  // 32K x 16 x 2 x 128 x 4
  EXPECT_EQ(whole.part_lse, 4 * MiB);
  EXPECT_EQ(whole.entries, 4 * MiB);
  EXPECT_EQ(whole.buckets, 2 * 4 * (64 * 16 + 1));
  EXPECT_EQ(whole.tiles, 16 * (32768 * 16 * 2 / 128 + 64 * 16 + 1));
  EXPECT_EQ(whole.chunk_tiles, 16);  // 2 int32, padded to 16 bytes
  const FwdScratch c8 = fwd_scratch_bytes(l, cfg, 8192);
  EXPECT_EQ(c8.chunks, 4);
  EXPECT_EQ(c8.chunk_tokens, 8192);
  EXPECT_EQ(c8.part_o, 128 * MiB);
  EXPECT_EQ(c8.part_lse, 1 * MiB);
  EXPECT_EQ(c8.entries, whole.entries);  // one index for every chunk: the whole batch's
  EXPECT_EQ(c8.buckets, 2 * 4 * (4 * 64 * 16 + 1));
  EXPECT_EQ(c8.tiles, 16 * (32768 * 16 * 2 / 128 + 4 * 64 * 16 + 1));
  EXPECT_EQ(c8.chunk_tiles, 4 * 5);
  // Issue 16's bar: MoBA's excess over dense was 1813 - 1286 = 527 MiB, the partials; at
  // C = 8192 the forward's scratch is 387 MiB less (384 of partial outputs, 3 of lse),
  // less 72 KiB more of buckets and tiles (3 more chunks of 1024 buckets: 8 + 16 bytes
  // each) and 4 bytes of chunk_tiles.
  EXPECT_EQ(whole.total() - c8.total(), 387 * MiB - 3 * 1024 * (8 + 16) - 4);
  // K = 1, or no full block: no partials at all.
  EXPECT_EQ(fwd_scratch_bytes(l, {512, 1}, 8192).total(), 0);
  EXPECT_EQ(fwd_scratch_bytes(Layout::batched(1, 500, 2, 1, 64), {512, 3}, 0).total(), 0);
}

// v18's sizes for the notes: at 2M tokens, Hq 16, D 128, S 512, K 3 and C 64K, the whole
// index (entries 256 MiB, 32 chunks x 65536 buckets) next to the partials it lets shrink.
TEST(FwdChunks, ScratchAt2MTokens) {
  const Layout l = Layout::batched(1, int64_t{1} << 21, 16, 16, 128);
  const MobaConfig cfg{512, 3};
  constexpr int64_t MiB = 1 << 20;
  const FwdScratch whole = fwd_scratch_bytes(l, cfg, 0);
  const FwdScratch c = fwd_scratch_bytes(l, cfg, 65536);
  EXPECT_EQ(whole.part_o, 32768 * MiB);  // 2M x 16 x 2 x 128 x 4 = 32 GiB
  EXPECT_EQ(c.chunks, 32);
  EXPECT_EQ(c.part_o, 1024 * MiB);
  EXPECT_EQ(c.entries, 256 * MiB);
  EXPECT_EQ(c.buckets, 2 * 4 * (32 * 4096 * 16 + 1));           // 16 MiB + 8
  EXPECT_EQ(c.tiles, 16 * ((int64_t{1} << 26) / 128 + 32 * 4096 * 16 + 1));  // 40 MiB + 16
  // chunk_tiles: 32 chunks + 1, then the scan's sums: 2^21 buckets on 512 CTAs, 2 int32 each.
  EXPECT_EQ(c.chunk_tiles, 4 * (33 + 2 * 512));
  EXPECT_EQ(whole.chunk_tiles, 4 * (2 + 2 * 16));  // 65536 buckets: 16 scan CTAs
}

// v19: the gather index's scan runs on one CTA up to kIndexScanBuckets buckets, on
// ceil(buckets / kIndexScanBuckets) beyond; the CTAs' sums (two int32 each) follow the
// chunks' tile starts in the chunk_tiles buffer only where there are several CTAs.
TEST(FwdChunks, IndexScanCtas) {
  EXPECT_EQ(kIndexScanBuckets, 4096);
  EXPECT_EQ(index_scan_ctas(1), 1);
  EXPECT_EQ(index_scan_ctas(4096), 1);
  EXPECT_EQ(index_scan_ctas(4097), 2);
  EXPECT_EQ(index_scan_ctas(8192), 2);
  EXPECT_EQ(index_scan_ctas(8648), 3);
  EXPECT_EQ(chunk_tiles_ints(1, 4096), 2);
  EXPECT_EQ(chunk_tiles_ints(3, 4097), 4 + 4);
  EXPECT_EQ(chunk_tiles_ints(47, 8648), 48 + 6);
  // 10M tokens, Hq 8, Hkv 2, S 512, C 64K: 153 chunks x 19531 full blocks x 2 kv heads.
  const Layout l = Layout::batched(1, 10000000, 8, 2, 128);
  const FwdScratch s = fwd_scratch_bytes(l, {512, 3}, 65536);
  EXPECT_EQ(s.chunks, 153);
  const int64_t buckets = 153 * int64_t{19531} * 2;
  EXPECT_EQ(s.buckets, 2 * 4 * (buckets + 1));
  EXPECT_EQ(s.chunk_tiles, 4 * (154 + 2 * ((buckets + 4095) / 4096)));
  // The GPU test's chunk_scan_ctas cases (attention_gpu_test.cpp) reach several scan CTAs.
  auto ctas = [](const Layout& lay, const MobaConfig& cfg, int64_t C) {
    const FwdScratch f = fwd_scratch_bytes(lay, cfg, C);
    return index_scan_ctas(f.buckets / 8 - 1);
  };
  const Layout v64 = Layout::varlen({0, 3000, 6000}, 2, 2, 64);
  EXPECT_EQ(ctas(v64, {64, 3}, 128), 3);
  EXPECT_EQ(ctas(v64, {64, 3}, 256), 2);
  EXPECT_EQ(ctas(v64, {64, 3}, 384), 1);
  EXPECT_EQ(ctas(Layout::varlen({0, 12000}, 2, 2, 128), {128, 3}, 128), 5);
}

TEST(FwdChunks, IndexPiecesStayInsideTheirChunk) {
  // One chunk: pieces of 2048 tokens, the last shorter; the sentinel {N, 1}.
  EXPECT_EQ(fwd_index_pieces({{0, 5000}}),
            (std::vector<int32_t>{0, 0, 2048, 0, 4096, 0, 5000, 1}));
  // Chunks of 2560 (> kIndexPieceTokens): two pieces per chunk, the second 512 tokens.
  const Layout l = Layout::batched(1, 6000, 2, 1, 64);
  const auto ch = check_chunks(l, {512, 3}, 2560);
  EXPECT_EQ(fwd_index_pieces(ch), (std::vector<int32_t>{0, 0, 2048, 0, 2560, 1, 4608, 1, 5120,
                                                        2, 6000, 3}));
  // Varlen chunks: every piece non-empty, at most kIndexPieceTokens, inside one chunk, in
  // order.
  const Layout v = Layout::varlen({0, 1, 78, 1077, 3000, 3001, 9500}, 2, 1, 64);
  for (int64_t C : {int64_t{0}, int64_t{256}, int64_t{2304}, int64_t{4096}, int64_t{6144}}) {
    SCOPED_TRACE("C " + std::to_string(C));
    const auto chunks = check_chunks(v, {256, 3}, C);
    const auto p = fwd_index_pieces(chunks);
    ASSERT_EQ(p.size() % 2, 0u);
    const size_t n = p.size() / 2 - 1;
    EXPECT_EQ(p[2 * n], v.tokens());
    EXPECT_EQ(p[2 * n + 1], static_cast<int32_t>(chunks.size()));
    EXPECT_EQ(p[0], 0);
    for (size_t i = 0; i < n; ++i) {
      const int64_t a = p[2 * i], z = p[2 * i + 2], c = p[2 * i + 1];
      ASSERT_LT(c, static_cast<int64_t>(chunks.size()));
      EXPECT_LT(a, z);
      EXPECT_LE(z - a, kIndexPieceTokens);
      EXPECT_GE(a, chunks[c].first);
      EXPECT_LE(z, chunks[c].second);
      if (i > 0) {
        EXPECT_LE(p[2 * i - 1], c) << "chunks in order";
      }
    }
  }
  expect_error([] { fwd_index_pieces({}); }, "no chunks");
  expect_error([] { fwd_index_pieces({{0, 100}, {120, 200}}); }, "chunk 1 is [120, 200)");
  expect_error([] { fwd_index_pieces({{0, 0}}); }, "non-empty range from 0");
  expect_error([] { fwd_index_pieces({{0, int64_t{1} << 32}}); }, "do not fit int32");
}

// v22's rule (MOBA_INDEX_PIECE_TOKENS=auto): halve the piece while the CTAs are fewer than
// kIndexPieceCtas and a CTA keeps at least one (token, slot) pair per full block's bin.
TEST(FwdChunks, IndexPieceTokensAuto) {
  // The trainer at 8K (12 heads, 16 full blocks of 512, K 3): 2048 -> 256, 32 x 12 CTAs.
  EXPECT_EQ(index_piece_tokens_auto(8192, 12, 16, 2), 256);
  // 32K, 12 heads: 512 would give 64 x 12 = 768 CTAs, so 256 (1536).
  EXPECT_EQ(index_piece_tokens_auto(32768, 12, 64, 2), 256);
  // 32K, 16 heads: 512 gives 64 x 16 = 1024, enough.
  EXPECT_EQ(index_piece_tokens_auto(32768, 16, 64, 2), 512);
  // 128K and longer: 2048 already gives >= 1024 CTAs.
  EXPECT_EQ(index_piece_tokens_auto(131072, 16, 256, 2), 2048);
  EXPECT_EQ(index_piece_tokens_auto(1 << 20, 16, 2048, 2), 2048);
  // Few heads at 64K: small pieces are wanted, but a CTA must cover its 1024 bins
  // (piece x 2 >= 1024): 512.
  EXPECT_EQ(index_piece_tokens_auto(65536, 1, 1024, 2), 512);
  // K = 2 (one slot), many blocks of 64: piece >= blocks.
  EXPECT_EQ(index_piece_tokens_auto(8192, 4, 128, 1), 256);
  EXPECT_EQ(index_piece_tokens_auto(8192, 4, 600, 1), 1024);
  // Never below the minimum, nor above the default.
  EXPECT_EQ(index_piece_tokens_auto(100, 1, 0, 2), kIndexPieceMin);
  EXPECT_EQ(index_piece_tokens_auto(1 << 24, 64, 1 << 15, 15), kIndexPieceTokens);
}

TEST(FwdChunks, ScratchIsSizedByTheLongestChunk) {
  const Layout l = Layout::varlen({0, 1, 78, 1077, 3000, 3001, 4500}, 2, 1, 64);
  const MobaConfig cfg{256, 3};
  int64_t longest = 0;
  for (const auto& [a, z] : fwd_chunks(l, cfg, 1024)) longest = std::max(longest, z - a);
  const FwdScratch s = fwd_scratch_bytes(l, cfg, 1024);
  EXPECT_EQ(s.chunk_tokens, longest);
  EXPECT_EQ(s.part_o, 4 * longest * 2 * 2 * 64);
}

}  // namespace
}  // namespace moba::attn
