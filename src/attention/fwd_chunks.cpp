#include "attention/fwd_chunks.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>

#include "attention/gate.h"
#include "core/error.h"

namespace moba::attn {

int64_t fwd_chunk_granule(const MobaConfig& cfg) { return std::max<int64_t>(cfg.block_size, 128); }

int64_t fwd_chunk_tokens(const Options& opt) {
  if (opt.fwd_chunk_tokens >= 0) return opt.fwd_chunk_tokens;
  MOBA_CHECK(opt.fwd_chunk_tokens == -1, "Options::fwd_chunk_tokens must be >= 0 or -1 (the ",
             kFwdChunkEnv, " environment variable), got ", opt.fwd_chunk_tokens);
  const char* e = std::getenv(kFwdChunkEnv);
  if (e == nullptr || *e == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(e, &end, 10);
  MOBA_CHECK(end != e && *end == '\0' && n >= 0, kFwdChunkEnv, "=", e,
             ": expected a number of tokens >= 0 (0 = unchunked)");
  return static_cast<int64_t>(n);
}

std::vector<std::pair<int64_t, int64_t>> fwd_chunks(const Layout& layout, const MobaConfig& cfg,
                                                    int64_t chunk_tokens) {
  layout.validate();
  cfg.validate();
  const int64_t G = fwd_chunk_granule(cfg), N = layout.tokens();
  MOBA_CHECK(chunk_tokens >= 0 && chunk_tokens % G == 0,
             "MoBA forward chunk of ", chunk_tokens, " tokens: must be 0 (unchunked) or a positive "
             "multiple of max(block size, 128) = ", G);
  std::vector<std::pair<int64_t, int64_t>> out;
  if (chunk_tokens == 0 || chunk_tokens >= N) {
    out.emplace_back(0, N);
    return out;
  }
  // Invariant: t is a sequence start or a multiple of G after one. The chunk ends at the
  // last such point at or before t + chunk_tokens: past t (a later sequence's start, or,
  // in t's own sequence, t + chunk_tokens itself).
  int64_t t = 0, b = 0;  // b: the sequence holding t + chunk_tokens (scanned forward)
  while (t < N) {
    const int64_t end = t + chunk_tokens;
    if (end >= N) {
      out.emplace_back(t, N);
      break;
    }
    while (layout.cu_seqlens[b + 1] <= end) ++b;
    const int64_t s = layout.cu_seqlens[b];
    const int64_t t1 = s + (end - s) / G * G;
    MOBA_CHECK(t1 > t, "fwd_chunks: no progress at token ", t);  // cannot happen (invariant)
    out.emplace_back(t, t1);
    t = t1;
  }
  return out;
}

int64_t fwd_index_piece_count(const std::vector<std::pair<int64_t, int64_t>>& chunks) {
  int64_t n = 0;
  for (const auto& [a, z] : chunks) n += (z - a + kIndexPieceTokens - 1) / kIndexPieceTokens;
  return n;
}

std::vector<int32_t> fwd_index_pieces(const std::vector<std::pair<int64_t, int64_t>>& chunks) {
  MOBA_CHECK(!chunks.empty(), "fwd_index_pieces: no chunks");
  MOBA_CHECK(chunks.back().second <= std::numeric_limits<int32_t>::max(),
             "fwd_index_pieces: ", chunks.back().second, " tokens do not fit int32");
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(2 * (fwd_index_piece_count(chunks) + 1)));
  int64_t at = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const auto [a, z] = chunks[c];
    MOBA_CHECK(a == at && z > a, "fwd_index_pieces: chunk ", c, " is [", a, ", ", z,
               "), expected a non-empty range from ", at);
    for (int64_t t = a; t < z; t += kIndexPieceTokens) {
      out.push_back(static_cast<int32_t>(t));
      out.push_back(static_cast<int32_t>(c));
    }
    at = z;
  }
  out.push_back(static_cast<int32_t>(at));
  out.push_back(static_cast<int32_t>(chunks.size()));
  return out;
}

FwdScratch fwd_scratch_bytes(const Layout& layout, const MobaConfig& cfg, int64_t chunk_tokens) {
  FwdScratch s;
  const int64_t rows = full_block_offset(layout, cfg, layout.batch());
  const int64_t kp = cfg.top_k - 1;
  if (kp == 0 || rows == 0) return s;
  const auto chunks = fwd_chunks(layout, cfg, chunk_tokens);
  s.chunks = static_cast<int64_t>(chunks.size());
  for (const auto& [a, z] : chunks) s.chunk_tokens = std::max(s.chunk_tokens, z - a);
  const int64_t slots = s.chunk_tokens * layout.num_q_heads * kp;
  const int64_t all = layout.tokens() * layout.num_q_heads * kp;
  const int64_t buckets = s.chunks * rows * layout.num_kv_heads;
  // Each buffer at least 16 bytes (Plan::scratch's minimum).
  auto buf = [](int64_t bytes) { return std::max<int64_t>(16, bytes); };
  s.part_o = buf(4 * slots * layout.head_dim);
  s.part_lse = buf(4 * slots);
  s.entries = buf(4 * all);
  // Tiles of <= 128 entries of one bucket: sum over buckets of ceil(count / 128) <=
  // entries / 128 + the non-empty buckets.
  s.tiles = buf(16 * (all / 128 + buckets + 1));
  s.buckets = 2 * buf(4 * (buckets + 1));
  s.chunk_tiles = buf(4 * chunk_tiles_ints(s.chunks, buckets));
  return s;
}

}  // namespace moba::attn
